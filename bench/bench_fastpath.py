"""Fast path study: can cached phrase embeddings stand in for a full-text re-encode?

A feature text is a handful of sentences ("Mostly games (80%) ...", "Active at night ...",
"Recently: ..."). Most sentences recur across users and updates, so their embeddings could
be cached once and combined per user without running the model on the whole text.
This script measures, on realistic texts from ingest's renderer, how close three
combinations get to the full-text embedding (the reference):

- ``mean``       token-weighted mean of sentence embeddings, L2-normalised
- ``mean+split`` the same, with the "Recently:" list split into one phrase per title
- ``ridge``      ``mean+split`` through a linear map fitted (ridge) on a disjoint half of
                 the texts: the best a cheap learned combination can do
- ``delta``      for an update old → new of one user: the old *full* embedding plus the
                 change of the phrase mean, ``normalize(full_old + mean_new - mean_old)``,
                 compared with doing nothing until the re-encode (``stale``: full_old)

It reports cosine to the full embedding, KMeans cluster agreement (k = 8 and 16, fitted
on the full embeddings; share of texts the approximation puts in the same cluster) and
phrase reuse (distinct phrases per text), which is what would make the path cheap.

    .venv/bin/python bench/bench_fastpath.py --texts 600 --pairs 300 --threads 2
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.linear_model import Ridge

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.encoder_texts import sample_texts, windows
from segstream.encoding import Encoder, cosine_rows

SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def phrases(text: str, split_titles: bool) -> list[str]:
    parts = [p for p in SENTENCE.split(text) if p]
    if not split_titles:
        return parts
    out = []
    for part in parts:
        if part.startswith("Recently: "):
            out += [f"Recently: {t.strip().rstrip('.')}"
                    for t in part.removeprefix("Recently: ").split(",") if t.strip()]
        else:
            out.append(part)
    return out


def combine(enc: Encoder, texts: list[str], split_titles: bool
            ) -> tuple[np.ndarray, int, int, float]:
    """(combined vectors, total phrases, distinct phrases, seconds to encode them)."""
    per_text = [phrases(t, split_titles) for t in texts]
    distinct = sorted({p for ps in per_text for p in ps})
    t0 = time.perf_counter()
    vecs = dict(zip(distinct, enc.encode(distinct), strict=True))
    seconds = time.perf_counter() - t0
    lengths = dict(zip(distinct, enc.token_lengths(distinct), strict=True))
    out = np.zeros((len(texts), enc.dim), dtype=np.float32)
    for i, ps in enumerate(per_text):
        w = np.array([lengths[p] for p in ps], dtype=np.float32)
        v = (np.stack([vecs[p] for p in ps]) * w[:, None]).sum(0)
        out[i] = v / max(np.linalg.norm(v), 1e-12)
    return out, sum(len(ps) for ps in per_text), len(distinct), seconds


def agreement(full: np.ndarray, approx: np.ndarray, k: int) -> float:
    km = KMeans(n_clusters=k, n_init=4, random_state=0).fit(full)
    return float((km.predict(full) == km.predict(approx)).mean())


def report(name: str, full: np.ndarray, approx: np.ndarray) -> None:
    cos = cosine_rows(full, approx)
    print(f"{name:12s} cosine mean {cos.mean():.4f} p5 {np.percentile(cos, 5):.4f} "
          f"min {cos.min():.4f} | cluster agreement k=8 {agreement(full, approx, 8):.1%} "
          f"k=16 {agreement(full, approx, 16):.1%}")


def update_pairs(n: int) -> list[tuple[str, str]]:
    """``n`` (old, new) text pairs: consecutive coalesced texts of one user that differ."""
    last: dict[str, str] = {}
    pairs: list[tuple[str, str]] = []
    for w in windows(users=max(100, n), window_events=100):
        for uid, text in w.texts.items():
            if uid in last and last[uid] != text:
                pairs.append((last[uid], text))
            last[uid] = text
    step = max(1, len(pairs) // n)
    return pairs[::step][:n]


def delta_study(enc: Encoder, n: int) -> None:
    pairs = update_pairs(n)
    old = [o for o, _ in pairs]
    new = [x for _, x in pairs]
    full_old, full_new = enc.encode(old), enc.encode(new)
    mean_old = combine(enc, old, split_titles=False)[0]
    mean_new = combine(enc, new, split_titles=False)[0]
    delta = full_old + mean_new - mean_old
    delta /= np.linalg.norm(delta, axis=1, keepdims=True)
    print(f"\n{len(pairs)} updates (consecutive differing texts of one user):")
    report("stale", full_new, full_old)
    report("delta", full_new, delta)
    report("mean", full_new, mean_new)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--texts", type=int, default=600)
    ap.add_argument("--pairs", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    texts = sample_texts(args.texts)
    enc = Encoder(dtype=args.dtype)
    print(f"{len(texts)} distinct realistic texts; {enc.model_version} {enc.dtype_name}, "
          f"{args.threads} threads")
    t0 = time.perf_counter()
    full = enc.encode(texts)
    full_s = time.perf_counter() - t0
    print(f"full texts: {len(texts) / full_s:.0f} texts/s "
          f"(mean {np.mean(enc.token_lengths(texts)):.0f} tokens)")
    for split in (False, True):
        approx, total, distinct, secs = combine(enc, texts, split)
        print(f"phrases{' (titles split)' if split else ''}: {total / len(texts):.1f} per "
              f"text, {distinct} distinct ({distinct / len(texts):.2f} per text), encoded "
              f"in {secs:.1f}s vs {full_s:.1f}s for the full texts")
        report("mean+split" if split else "mean", full, approx)
    half = len(texts) // 2
    model = Ridge(alpha=1.0).fit(approx[:half], full[:half])
    mapped = model.predict(approx[half:]).astype(np.float32)
    mapped /= np.linalg.norm(mapped, axis=1, keepdims=True)
    report("ridge (held-out half)", full[half:], mapped)
    report("mean+split (same half)", full[half:], approx[half:])
    delta_study(enc, args.pairs)


if __name__ == "__main__":
    main()
