"""Item co-occurrence factors carried in a model directory: the hybrid item view online.

``segstream factors build`` computes each item's collaborative factor from a history of
events (``interest.cooccurrence_factors``: the TruncatedSVD of the user × item log-tf-idf
matrix, the co-occurrence baseline's) and writes a model directory: the base encoder's
files, linked, plus ``item_factors.npz``. An ``Encoder`` loaded from such a directory
carries the table (``Encoder.item_factors``) and every item's vector becomes
``concat(unit(text), weight · unit(factor))`` (``ItemFactors.compose``; zeros in a missing
part, so an item with only a factor still counts), exactly
``interest.hybrid_item_vectors``, which eval's ``hybrid`` row measures. Nothing else
changes: users' interest vectors are the same weighted, decayed sums over wider items.

The factor file is part of the model version (``Encoder.model_version``) but not of the
text version (``Encoder.text_version``, the base model's version: item texts are not
re-embedded for a new table). A refreshed table is therefore rolled out like a fine-tuned
model (``segstream model rollout DIR``): every user's vector rebuilt, the segmenter
refitted by members. Eval's carried probes showed why a refresh must go with a refit:
recomputed factors move the SVD basis under the centres.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from segstream.errors import ConfigError
from segstream.events import Event
from segstream.interest import EPS, cooccurrence_factors, hybrid_item_vectors

FACTORS_FILE = "item_factors.npz"
NOTE_FILE = "README_item_factors.md"  # documentation: not part of the model version
DEFAULT_DIMS = 64
DEFAULT_WEIGHT = 0.5  # β that eval's tuning splits chose on both datasets (README)


class ItemFactors:
    """A table item → unit factor (or none), the weight β and how it was made."""

    def __init__(self, items: Iterable[str], matrix: np.ndarray, weight: float,
                 meta: Mapping[str, object] | None = None) -> None:
        self.items = tuple(items)
        matrix = np.asarray(matrix, dtype=np.float32)
        if matrix.ndim != 2 or matrix.shape[0] != len(self.items) or matrix.shape[1] < 1:
            raise ConfigError(f"item factors: a matrix of {matrix.shape} for "
                              f"{len(self.items)} items")
        if not np.isfinite(matrix).all():
            raise ConfigError("item factors: the matrix holds NaN or infinite values")
        if not weight > 0 or not np.isfinite(weight):
            raise ConfigError(f"item factors: weight must be > 0, got {weight}")
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        self.matrix = np.where(norms > EPS, matrix / np.maximum(norms, EPS), 0.0)
        self.weight = float(weight)
        self.meta = dict(meta or {})
        self._index = {item: k for k, item in enumerate(self.items)
                       if norms[k, 0] > EPS}

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def __len__(self) -> int:
        return len(self._index)

    def factor(self, item: str) -> np.ndarray | None:
        """The item's unit factor, or None when the table has no usable one."""
        k = self._index.get(item)
        return None if k is None else self.matrix[k]

    def table(self) -> dict[str, np.ndarray]:
        return {item: self.matrix[k] for item, k in self._index.items()}

    def compose(self, items: Iterable[str], text_vectors: Mapping[str, np.ndarray],
                text_dim: int) -> dict[str, np.ndarray]:
        """``interest.hybrid_item_vectors`` over ``items`` only: ``concat(unit(text),
        weight · factor)`` for each that has a text vector or a factor (the other part
        zeros); items with neither are left out."""
        wanted = set(items)
        factors = {i: f for i in wanted if (f := self.factor(i)) is not None}
        texts = {i: v for i, v in text_vectors.items() if i in wanted}
        return hybrid_item_vectors(texts, factors, self.weight, (text_dim, self.dim))

    def apply(self, text_vectors: Mapping[str, np.ndarray], text_dim: int
              ) -> dict[str, np.ndarray]:
        """The whole composed table over every item with either part (offline)."""
        return hybrid_item_vectors(text_vectors, self.table(), self.weight,
                                   (text_dim, self.dim))

    # ------------------------------------------------------------------ files
    def save(self, directory: Path) -> Path:
        path = directory / FACTORS_FILE
        tmp = directory / (FACTORS_FILE + ".tmp.npz")
        np.savez(tmp, items=np.asarray(self.items, dtype=str), matrix=self.matrix,
                 weight=np.float64(self.weight), meta=np.asarray(json.dumps(self.meta)))
        os.replace(tmp, path)
        return path


def load(directory: str | os.PathLike[str]) -> ItemFactors | None:
    """The table in a model directory, None when it has none; a malformed file is a
    ``ConfigError`` naming it."""
    path = Path(directory) / FACTORS_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            items = [str(i) for i in data["items"].tolist()]
            matrix, weight = data["matrix"], float(data["weight"])
            meta = json.loads(str(data["meta"]))
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read item factors {path}: {exc}") from None
    return ItemFactors(items, matrix, weight, meta)


def from_events(events: Iterable[Event], dims: int = DEFAULT_DIMS,
                weight: float = DEFAULT_WEIGHT, scaled: bool = True, seed: int = 0,
                meta: Mapping[str, object] | None = None) -> ItemFactors:
    """The factor table of ``events`` (``interest.cooccurrence_factors``); a
    ``ConfigError`` when they hold too few users or items for one component."""
    table = cooccurrence_factors(events, dims, seed, scaled)
    if not table:
        raise ConfigError("item factors need events of at least 2 users on 2 items")
    items = sorted(table)
    return ItemFactors(items, np.stack([table[i] for i in items]), weight,
                       {"dims": dims, "scaled": scaled, "seed": seed, **(meta or {})})


def require_empty_dir(out: Path, label: str | None = None) -> None:
    """A ``ConfigError`` (naming ``label``, default the path) unless ``out`` is missing
    or an empty directory: where ``write_model_dir`` may write."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{label or out}: exists and is not an empty directory")


def write_model_dir(base: Path, out: Path, factors: ItemFactors, base_name: str,
                    base_version: str, copy: bool = False) -> None:
    """A model directory at ``out``: each entry of ``base`` linked (a symlink to its
    resolved path) or, with ``copy``, copied (the factors file and its note excepted),
    plus the table and a short note. ``out`` must not exist, or be empty."""
    require_empty_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    for entry in sorted(base.iterdir()):
        if entry.name in (FACTORS_FILE, NOTE_FILE):
            continue
        if not copy:
            (out / entry.name).symlink_to(entry.resolve())
        elif entry.is_dir():
            shutil.copytree(entry, out / entry.name)
        else:
            shutil.copy2(entry, out / entry.name)
    factors.meta.update(base_name=base_name, base_version=base_version)
    factors.save(out)
    (out / NOTE_FILE).write_text(
        f"# Item co-occurrence factors over {base_version}\n\n"
        f"{len(factors):,} items, {factors.dim} dimensions, weight {factors.weight:g}.\n"
        f"Made by `segstream factors build`: {json.dumps(factors.meta, sort_keys=True)}\n"
        "Roll it out with `segstream model rollout` (see segstream.item_factors).\n")
