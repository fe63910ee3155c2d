"""The trainer's commands: ``segstream finetune``, ``segstream factors build`` and
``segstream model ...``."""

from __future__ import annotations

from typing import Any


def register(sub: Any, run_sub: Any) -> None:
    """Add ``segstream finetune``, ``segstream factors`` and ``segstream model`` (jobs,
    not services)."""
    from segstream_services.trainer.factors_cli import register_factors
    from segstream_services.trainer.finetune_cli import register_finetune
    from segstream_services.trainer.model_cli import register_model

    register_finetune(sub)
    register_factors(sub)
    register_model(sub)
