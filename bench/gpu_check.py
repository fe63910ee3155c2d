"""Encoder check on a CUDA machine: correctness per dtype and throughput vs
sentence-transformers (run through ``bench/gpu_check.sh``; a few minutes on one GPU).

1. correctness: ``Encoder`` in fp32, bf16 and fp16 on CUDA against a plain transformers
   fp32 forward pass with mean pooling written here (cosine; PASS at ≥ 0.999);
2. throughput: texts/s of ``Encoder`` (bf16 and fp16, several batch sizes) against
   ``SentenceTransformer.encode()`` — its defaults (fp32, batch 32) and fp16 at the best
   batch size — on the same realistic texts, GPU and process.

Exit status 0 when every correctness check passes, 1 when one fails, 2 without CUDA.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.encoder_texts import sample_texts
from segstream.encoding import Encoder, cosine_rows, default_model_path


def reference(texts: list[str]) -> np.ndarray:
    from transformers import AutoModel, AutoTokenizer

    path = default_model_path()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval().cuda()
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), 64):
            batch = tok(texts[i:i + 64], padding=True, truncation=True, max_length=256,
                        return_tensors="pt").to("cuda")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            vec = (hidden * mask).sum(1) / mask.sum(1)
            out.append(torch.nn.functional.normalize(vec, dim=-1).cpu())
    return torch.cat(out).numpy()


def timed(fn, texts: list[str], repeats: int = 2) -> float:
    """Best texts/s over ``repeats`` runs (CUDA synchronised)."""
    best = 0.0
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(texts)
        torch.cuda.synchronize()
        best = max(best, len(texts) / (time.perf_counter() - t0))
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--texts", type=int, default=20_480, help="texts per throughput run")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: CUDA is not available on this machine", file=sys.stderr)
        return 2
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, "
          f"bf16 supported: {torch.cuda.is_bf16_supported()}")
    distinct = sample_texts(2_048)
    texts = (distinct * (args.texts // len(distinct) + 1))[:args.texts]

    ref = reference(distinct[:512])
    ok = True
    encoders = {}
    for dtype in ("float32", "bfloat16", "float16"):
        enc = encoders[dtype] = Encoder(device="cuda", dtype=dtype)
        cos = cosine_rows(enc.encode(distinct[:512]), ref)
        passed = cos.min() >= 0.999
        ok &= bool(passed)
        print(f"correctness {dtype:8s}: cosine to the reference mean {cos.mean():.6f} "
              f"min {cos.min():.6f} {'PASS' if passed else 'FAIL'}")
    print(f"dtype=auto picks {Encoder(device='cuda').dtype_name}")

    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(default_model_path()), device="cuda")
    st.encode(texts[:1024])
    base = timed(lambda t: st.encode(t, batch_size=32), texts)
    print(f"\nthroughput on {len(texts)} texts (mean "
          f"{np.mean(encoders['float32'].token_lengths(distinct[:512])):.0f} tokens):")
    print(f"sentence-transformers fp32 batch 32 (defaults): {base:9.0f} texts/s")
    best_bs, best = 0, 0.0
    for dtype in ("bfloat16", "float16"):
        enc = encoders[dtype]
        enc.encode(texts[:2048])
        for bs in (256, 512, 1024):
            r = timed(lambda t, e=enc, b=bs: e.encode(t, batch_size=b), texts)
            print(f"segstream {dtype:8s} batch {bs:4d}:             {r:9.0f} texts/s "
                  f"x{r / base:.2f}")
            if r > best:
                best, best_bs = r, bs
    st.half()
    st_fp16 = timed(lambda t: st.encode(t, batch_size=best_bs), texts)
    print(f"sentence-transformers fp16 batch {best_bs}:       {st_fp16:9.0f} texts/s "
          f"(segstream best x{best / st_fp16:.2f})")
    print(f"\nbest segstream: {best:.0f} texts/s (target >= 20,000); correctness "
          f"{'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
