"""The model directory a run writes: weights, tokenizer, sentence-transformers layout
(modules.json, pooling, max_seq_length), ``training.json`` and ``MODEL_CARD.md``."""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
from pathlib import Path
from typing import Any

import torch

from segstream.encoding import Pooling
from segstream.errors import StateError


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


def save_model(transformer: Any, tokenizer: Any, pooling: Pooling, max_seq_length: int,
               lora: bool, final: Path, training: dict[str, Any]) -> Path:
    """Write the model directory atomically (a temporary folder, then a rename); a LoRA
    adapter is merged into the weights and also kept alone under ``adapter/``."""
    if final.exists():
        raise StateError(f"model directory already exists: {final}")
    tmp = final.parent / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if lora:
        transformer.save_pretrained(tmp / "adapter")  # the adapter alone, for reference
        transformer = transformer.merge_and_unload()
    transformer = transformer.to("cpu", dtype=torch.float32)
    transformer.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    write_st_layout(tmp, pooling, int(transformer.config.hidden_size), max_seq_length)
    training["model_dir"] = final.name
    (tmp / "training.json").write_text(json.dumps(training, indent=2, default=str) + "\n")
    (tmp / "MODEL_CARD.md").write_text(model_card(final.name, training))
    tmp.rename(final)
    return final


def write_st_layout(root: Path, pooling: Pooling, dim: int, max_length: int) -> None:
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


def _check_table(check: dict[str, Any]) -> str:
    before, after = check["before"], check["after"]
    rows = [("mean cosine, held-out co-occurring pairs", "positive_cosine"),
            ("mean cosine, random pairs", "random_cosine"),
            ("gap (positive - random)", "gap"),
            ("AUC: a co-occurring pair is closer than a random one", "auc"),
            (f"recall@{after['k']}, new item from its title only", "recall_title_only"),
            (f"recall@{after['k']}, new item from its full text", "recall_full_text")]
    lines = [f"| {label} | {_fmt(before.get(key))} | {_fmt(after.get(key))} |"
             for label, key in rows]
    return ("\n## Co-occurrence check (held-out items, never trained on)\n"
            f"{after['held_out_pairs']} held-out pairs; {after['new_items']} new items ranked "
            f"against {after['catalog']} catalog items (chance recall@{after['k']} "
            f"{_fmt(after['chance_recall'])}).\n\n"
            "| measure | base | fine-tuned |\n|---|---:|---:|\n"
            + "\n".join(lines) + "\n")


def model_card(name: str, t: dict[str, Any]) -> str:
    """``MODEL_CARD.md``: what the model is, what it was trained on, how, and how well."""
    hp, m, data, pairs = t["hyper_parameters"], t["metrics"], t["data"], t["pairs"]
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
    aux = ("Auxiliary head: the next window's top category from the earlier window's "
           f"embedding (weight {hp['aux_weight']}, "
           f"{len(t['objective']['next_category_labels'])} classes; not saved)."
           if hp["objective"] == "contrastive+category" else "")
    return f"""# {name}

A segstream encoder: `{t['base_model']['version']}` fine-tuned on the platform's own
behaviour with `segstream finetune`. Load it with `encoder.model_path = "<this directory>"`
or `segstream eval ... --model <this directory>`; the pooling
({t['pooling']['mode']}{' + L2' if t['pooling']['normalize'] else ''}) and maximum sequence
length are the base model's. `adapter/` (LoRA runs only) holds the unmerged adapter.

## Data
{data_lines}
- pairs: {pairs['train']} train ({pairs['train_users']} users), {pairs['held_out']} held out
  ({pairs['held_out_users']} users); held out by {pairs['held_out_by']}

## Objective
{t['objective']['name']}: {t['objective']['contrastive']}.
{aux}

## Training
{method}; {t['parameters']['trainable']:,} trainable of {t['parameters']['transformer_total']:,}
transformer parameters; lr {hp['lr']:g}, batch {hp['batch_size']}, temperature
{hp['temperature']}, max length {hp['max_length']} tokens in training, epochs {hp['epochs']},
early stopping on the held-out contrastive loss (patience {hp['patience']}); {t['steps']} of
{t['steps_planned']} steps{' (stopped early)' if t['stopped_early'] else ''};
{t['train_seconds']} s on {hw['device']} ({hw.get('gpu', hw['cpu'])}, {hw['torch_threads']}
torch threads), started {t['started_at']}.

## Held-out metrics (step 0 = the base model; the best step's weights are saved)
Retrieval: find each held-out anchor's own positive among all held-out positives (top-1, MRR).

| step | epoch | train loss | held-out loss | retrieval@1 | MRR | next-category acc |
|---:|---:|---:|---:|---:|---:|---:|
{rows}

Best: step {m['best']['step']}, held-out loss {_fmt(m['best']['loss'])} (base \
{_fmt(m['base']['loss'])}), retrieval@1 {_fmt(m['best']['accuracy'])} (base \
{_fmt(m['base']['accuracy'])}).
{_check_table(t['check']) if t.get('check') else ''}
## Limits
Held-out metrics measure the training objective, not recommendation quality: judge the
model with `segstream eval --model` on a period after the training data window.
"""
