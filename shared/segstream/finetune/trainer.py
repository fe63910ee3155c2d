"""The training loop: one run from a base model to a new model directory.

Full fine-tuning (optionally only the last N transformer layers) or LoRA (peft, merged
into the weights on save); symmetric InfoNCE with in-batch negatives over the pairs of
the objective (window pairs or item pairs); training stops early when the held-out loss
stops improving and the best weights are kept.
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from segstream.encoding import (
    DEFAULT_MODEL_NAME,
    Pooling,
    _safe_name,
    content_hash,
    default_model_path,
    default_model_path_or_none,
    pool,
    read_layout,
    resolve_device,
)
from segstream.errors import ConfigError, DataError, StateError
from segstream.finetune.config import EvalPoint, FinetuneConfig, FinetuneResult, Hooks
from segstream.finetune.items import ItemPair, describe_items
from segstream.finetune.objectives import info_nce, negatives_mask, retrieval
from segstream.finetune.output import hardware, save_model
from segstream.finetune.windows import Pair, describe_windows

_LAYER_INDEX = re.compile(r"\.layers?\.(\d+)\.")
AnyPair = Pair | ItemPair
Check = Callable[[Callable[[Sequence[str]], np.ndarray]], dict[str, Any]]
_POSITIVES = {
    "contrastive": "feature texts of two neighbouring disjoint time windows of one user",
    "cooccurrence": "texts (title, category path) of two items one user took in the same "
                    "basket or in a row, before --until"}


class _Model(torch.nn.Module):
    """Transformer + the base model's pooling (+ the auxiliary category head)."""

    def __init__(self, transformer: torch.nn.Module, pooling: Pooling, categories: int) -> None:
        super().__init__()
        self.transformer = transformer
        self.pooling = pooling
        dim = int(transformer.config.hidden_size)  # type: ignore[union-attr, arg-type]
        self.head = torch.nn.Linear(dim, categories) if categories else None

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.transformer(**batch)[0].float()
        return pool(hidden, batch["attention_mask"], Pooling(self.pooling.mode, False))


def _freeze_for(model: torch.nn.Module, layers: int) -> int:
    """Train only the last ``layers`` transformer layers (0: everything); the number of
    layers the model has."""
    indices = {int(m.group(1)) for n, _ in model.named_parameters()
               if (m := _LAYER_INDEX.search(n))}
    total = max(indices) + 1 if indices else 0
    if layers == 0:
        return total
    if layers > total:
        raise ConfigError(f"--train-layers {layers}: the model has {total} layers")
    for name, param in model.named_parameters():
        m = _LAYER_INDEX.search(name)
        param.requires_grad = bool(m and int(m.group(1)) >= total - layers)
    return total


class Trainer:
    """One fine-tuning run: ``run(train, held, out_root)`` → the new model directory."""

    def __init__(self, config: FinetuneConfig, hooks: Hooks | None = None) -> None:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        config.check()
        self.config = config
        self.hooks = hooks or Hooks()
        self.base_root = Path(config.base_model) if config.base_model else default_model_path()
        if not self.base_root.is_dir():
            raise ConfigError(f"base model directory not found: {self.base_root}")
        model_dir, self.pooling, st_max = read_layout(self.base_root)
        hf_logging.disable_progress_bar()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
            self.transformer = AutoModel.from_pretrained(model_dir, local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError(f"cannot load base model from {model_dir}: {first}") from None
        native = int(getattr(self.transformer.config, "max_position_embeddings", 512))
        self.saved_max_length = min(st_max or native, native)  # what the new model keeps
        self.max_length = min(config.max_length or self.saved_max_length, native)
        self.device = resolve_device(config.device)
        self.base_name = (DEFAULT_MODEL_NAME if self.base_root == default_model_path_or_none()
                          else _safe_name(self.base_root.name))
        self.base_version = f"{self.base_name}-{content_hash(self.base_root)}"

    # -- batches
    def _tokens(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(list(texts), padding=True, truncation=True,
                               max_length=self.max_length, return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items()
                if k in ("input_ids", "attention_mask", "token_type_ids")}

    def _embed(self, model: _Model, texts: Sequence[str]) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16,
                            enabled=self.device.type == "cuda"):
            return model(self._tokens(texts))

    @torch.inference_mode()
    def embed_texts(self, model: _Model, texts: Sequence[str]) -> np.ndarray:
        """Vectors of ``texts`` from the model being trained (eval mode, batched)."""
        was_training = model.training
        model.eval()
        rows = [self._embed(model, texts[i:i + 64]).float().cpu().numpy()
                for i in range(0, len(texts), 64)]
        model.train(was_training)
        return np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)

    def _loss(self, model: _Model, pairs: Sequence[AnyPair], labels: dict[str, int]
              ) -> torch.Tensor:
        a = self._embed(model, [p.anchor for p in pairs])
        b = self._embed(model, [p.positive for p in pairs])
        loss = info_nce(a, b, self.config.temperature, negatives_mask(pairs, self.device))
        if model.head is not None:
            target = torch.tensor([labels.get(_next_category(p), -100) for p in pairs],
                                  device=self.device)
            if (target >= 0).any():
                logits = model.head(F.normalize(a, dim=-1))
                loss = loss + self.config.aux_weight * F.cross_entropy(logits, target,
                                                                       ignore_index=-100)
        return loss

    @torch.inference_mode()
    def evaluate(self, model: _Model, held: Sequence[AnyPair], labels: dict[str, int],
                 step: int, epoch: float) -> EvalPoint:
        """Held-out contrastive loss (same batch size as training) and pair retrieval."""
        model.eval()
        bs = self.config.batch_size
        a_rows, b_rows, losses, weights = [], [], [], []
        for start in range(0, len(held), bs):
            chunk = held[start:start + bs]
            a = self._embed(model, [p.anchor for p in chunk]).float()
            b = self._embed(model, [p.positive for p in chunk]).float()
            a_rows.append(a)
            b_rows.append(b)
            if len(chunk) >= 2:
                masked = negatives_mask(chunk, self.device)
                losses.append(float(info_nce(a, b, self.config.temperature, masked)))
                weights.append(len(chunk))
        A, B = torch.cat(a_rows), torch.cat(b_rows)
        every = negatives_mask(held, torch.device("cpu")).numpy()
        acc, mrr = retrieval(A.cpu().numpy(), B.cpu().numpy(), every)
        cat_acc = None
        if model.head is not None:
            target = np.array([labels.get(_next_category(p), -1) for p in held])
            known = target >= 0
            if known.any():
                pred = model.head(F.normalize(A, dim=-1)).argmax(dim=1).cpu().numpy()
                cat_acc = float((pred[known] == target[known]).mean())
        model.train()
        return EvalPoint(step, round(epoch, 3), float(np.average(losses, weights=weights)),
                         acc, mrr, cat_acc)

    def run(self, train: Sequence[AnyPair], held: Sequence[AnyPair], out_root: str | Path,
            name: str | None = None, data: dict[str, Any] | None = None,
            check: Check | None = None) -> FinetuneResult:
        """Train, keep the best held-out weights, write the model directory. ``check``
        (texts -> vectors function -> figures) runs on the base and on the saved weights
        and goes into ``training.json`` and the model card."""
        cfg = self.config
        items = cfg.objective == "cooccurrence"
        kind = ItemPair if items else Pair
        if not all(isinstance(p, kind) for p in (*train, *held)):
            raise ConfigError(f"objective {cfg.objective} trains on {kind.__name__} pairs")
        if len(train) < cfg.batch_size:
            raise DataError(f"{len(train)} training pairs: fewer than one batch of "
                              f"{cfg.batch_size}; lower --batch-size or add data")
        if len(held) < 2:
            raise DataError(f"{len(held)} held-out pairs: need at least 2")
        started_at = datetime.now(UTC)
        t0 = time.perf_counter()
        stamp = started_at.strftime("%Y%m%dT%H%M%SZ")
        final = Path(out_root) / _safe_name(name or f"{self.base_name}-ft-{stamp}")
        if final.exists():
            raise StateError(f"model directory already exists: {final}")
        torch.manual_seed(cfg.seed)
        rng = random.Random(cfg.seed)
        counts = Counter(_next_category(p) for p in train if _next_category(p))
        labels = ({c: i for i, c in enumerate(sorted(c for c, n in counts.items() if n >= 2))}
                  if cfg.objective == "contrastive+category" else {})
        if cfg.objective == "contrastive+category" and len(labels) < 2:
            raise DataError("next-category objective needs at least 2 categories that occur "
                              "twice in the training pairs")
        layers = _freeze_for(self.transformer, cfg.train_layers if cfg.method == "full" else 0)
        transformer = self.transformer
        if cfg.method == "lora":
            transformer = self._lora(transformer)
        model = _Model(transformer, self.pooling, len(labels)).to(self.device)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        trainable = sum(p.numel() for p in params)
        total_params = sum(p.numel() for n, p in model.transformer.named_parameters()
                           if "lora_" not in n)  # the base model's own parameters
        optim = torch.optim.AdamW(params, lr=cfg.learning_rate(), weight_decay=cfg.weight_decay)
        per_epoch = len(train) // cfg.batch_size
        total = per_epoch * cfg.epochs
        if cfg.max_steps:
            total = min(total, cfg.max_steps)
        warm = max(1, int(total * cfg.warmup)) if cfg.warmup else 0
        sched = torch.optim.lr_scheduler.LambdaLR(
            optim, lambda s: (s + 1) / warm if s < warm
            else max(0.0, (total - s) / max(1, total - warm)))
        every = cfg.eval_every or per_epoch

        base = self.evaluate(model, held, labels, 0, 0.0)
        base.category_accuracy = None  # the head is untrained at step 0
        check_before = check(lambda t: self.embed_texts(model, t)) if check else None
        self.hooks.evaluated(base)
        history, best = [base], base
        best_state = _snapshot(model)
        bad, step, stopped, running = 0, 0, False, []
        self.hooks.start(total)
        order = list(train)
        while step < total and not stopped:
            rng.shuffle(order)
            for start in range(0, per_epoch * cfg.batch_size, cfg.batch_size):
                loss = self._loss(model, order[start:start + cfg.batch_size], labels)
                optim.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optim.step()
                sched.step()
                step += 1
                value = float(loss.detach())
                running.append(value)
                self.hooks.step(step, value)
                if step % every == 0 or step == total:
                    point = self.evaluate(model, held, labels, step, step / per_epoch)
                    point.train_loss = float(np.mean(running))
                    running = []
                    history.append(point)
                    self.hooks.evaluated(point)
                    if point.loss < best.loss - cfg.min_delta:
                        best, bad, best_state = point, 0, _snapshot(model)
                    else:
                        bad += 1
                        stopped = bad >= cfg.patience
                if stopped or step >= total:
                    break
        _restore(model, best_state)
        check_after = check(lambda t: self.embed_texts(model, t)) if check else None
        seconds = time.perf_counter() - t0
        training = {
            "base_model": {"path": str(self.base_root), "version": self.base_version},
            "data": data or {},
            "pairs": (describe_items(train, held) if items  # type: ignore[arg-type]
                      else describe_windows(train, held)),  # type: ignore[arg-type]
            "objective": {"name": cfg.objective,
                          "contrastive": "symmetric InfoNCE, in-batch negatives, cosine / "
                                         "temperature; positives = "
                                         + _POSITIVES["cooccurrence" if items else "contrastive"],
                          "next_category_labels": sorted(labels, key=lambda c: labels[c])},
            "hyper_parameters": asdict(cfg) | {"lr": cfg.learning_rate(),
                                               "max_length": self.max_length,
                                               "saved_max_seq_length": self.saved_max_length,
                                               "base_model": str(self.base_root)},
            "parameters": {"trainable": trainable, "transformer_total": total_params,
                           "layers": layers},
            "metrics": {"base": asdict(base), "best": asdict(best),
                        "history": [asdict(p) for p in history]},
            "steps": step, "steps_planned": total, "stopped_early": stopped,
            "hardware": hardware(self.device),
            "started_at": started_at.isoformat(timespec="seconds"),
            "train_seconds": round(seconds, 1),
            "pooling": {"mode": self.pooling.mode, "normalize": self.pooling.normalize},
        }
        if check_before is not None and check_after is not None:
            training["check"] = {"before": check_before, "after": check_after}
        path = save_model(model.transformer, self.tokenizer, self.pooling,
                          self.saved_max_length, cfg.method == "lora", final, training)
        return FinetuneResult(path, base, best, history, step, stopped, seconds, training)

    def _lora(self, transformer: torch.nn.Module) -> torch.nn.Module:
        from peft import LoraConfig, get_peft_model

        cfg = self.config
        names = {n.rsplit(".", 1)[-1] for n, m in transformer.named_modules()
                 if isinstance(m, torch.nn.Linear)}
        targets = [t for t in cfg.lora_targets if t in names]
        if not targets:
            raise ConfigError(f"LoRA targets {','.join(cfg.lora_targets)} match no linear "
                              f"layer of the model (it has: {', '.join(sorted(names))})")
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=targets, bias="none")
        return get_peft_model(transformer, lora)


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _restore(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in state:
                p.copy_(state[n])


def _next_category(pair: AnyPair) -> str:
    return (pair.next_category or "") if isinstance(pair, Pair) else ""
