"""The trainer's commands: ``segstream finetune`` and ``segstream model ...``."""

from __future__ import annotations

from typing import Any


def register(sub: Any, run_sub: Any) -> None:
    """Add ``segstream finetune`` and ``segstream model`` (jobs, not services)."""
    from segstream_services.trainer.finetune_cli import register_finetune
    from segstream_services.trainer.model_cli import register_model

    register_finetune(sub)
    register_model(sub)
