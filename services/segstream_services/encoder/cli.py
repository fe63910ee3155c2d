"""``segstream run encoder`` and ``segstream encode TEXT...`` (a debugging aid)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from segstream.config import Settings
from segstream.errors import ConfigError

log = logging.getLogger("segstream.encoder")

DTYPES = ("auto", "float32", "bfloat16", "float16")


def _apply_overrides(settings: Settings, args: argparse.Namespace) -> Settings:
    update = {k: v for k, v in (("device", args.device), ("dtype", args.dtype),
                                ("model_path", args.model)) if v is not None}
    if not update:
        return settings
    return settings.model_copy(update={"encoder": settings.encoder.model_copy(update=update)})


def cmd_run_encoder(settings: Settings, args: argparse.Namespace) -> int:
    from segstream.health import service_health
    from segstream_services.encoder.service import EncoderWorker
    from segstream_services.runtime import run_service, service_options

    settings = _apply_overrides(settings, args)
    port, idle_exit_s = service_options(args, settings.encoder.metrics_port)
    worker = EncoderWorker(settings)
    worker.encoder.warmup()
    cfg = settings.encoder
    log.info("encoder %s on %s (%s): claim_batch=%d max_wait_ms=%d lease_s=%.0f cache=%s",
             worker.encoder.model_version, worker.encoder.device, worker.encoder.dtype_name,
             cfg.claim_batch, cfg.max_wait_ms, cfg.lease_s, "on" if cfg.cache_enabled else "off")
    run_service("encoder", worker, metrics=worker.metrics.base,
                port=port, health=service_health(settings, kafka=False, client=worker.client,
                                                 metrics=worker.metrics.base,
                                                 worker=worker.health),
                idle_exit_s=idle_exit_s, summary=lambda _: worker.summary())
    return 0


def cmd_encode(settings: Settings, args: argparse.Namespace) -> int:
    import numpy as np

    from segstream.encoding import Encoder, text_hash

    texts = list(args.text)
    if args.file:
        try:
            with open(args.file, encoding="utf-8") as fh:
                texts += [line.strip() for line in fh if line.strip()]
        except OSError as exc:
            raise ConfigError(f"cannot read {args.file}: {exc.strerror}") from None
    if not texts:
        raise ConfigError("give at least one TEXT or --file")
    encoder = Encoder.from_settings(_apply_overrides(settings, args).encoder)
    vectors = encoder.encode(texts)
    if args.json:
        print(json.dumps({"model_version": encoder.model_version,
                          "device": str(encoder.device), "dtype": encoder.dtype_name,
                          "vectors": [{"text_hash": text_hash(t), "vector": v.tolist()}
                                      for t, v in zip(texts, vectors, strict=True)]}))
        return 0
    print(f"model {encoder.model_version} on {encoder.device} ({encoder.dtype_name}), "
          f"dim {encoder.dim}, pooling {encoder.pooling.mode}")
    for i, (text, vec) in enumerate(zip(texts, vectors, strict=True)):
        head = " ".join(f"{x:+.3f}" for x in vec[:4])
        print(f"[{i}] tokens={encoder.token_lengths([text])[0]} norm={np.linalg.norm(vec):.3f}"
              f" [{head} ...] {text[:60]!r}")
    if len(texts) > 1:
        sims = vectors @ vectors.T
        print("cosine:")
        for i, row in enumerate(sims):
            print(f"[{i}] " + " ".join(f"{x:.3f}" for x in row))
    return 0


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="DIR", help="local model directory "
                   "(default: encoder.model_path, else all-MiniLM-L6-v2)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: encoder.device)")
    p.add_argument("--dtype", choices=DTYPES, help="compute dtype (default: encoder.dtype)")


def register(sub: argparse._SubParsersAction, run_sub: argparse._SubParsersAction) -> None:
    """Add ``run encoder`` and ``encode`` to the segstream CLI."""
    from segstream_services.runtime import add_service_args

    help_ = ("Compute changed users' vectors in micro-batches from their interest (item "
             "vectors, embedded once per model) and feature-text views (claims dirty users "
             "from Redis, writes their vectors, feeds the segmenter); SIGTERM finishes the "
             "batch in hand.")
    p = run_sub.add_parser("encoder", help=help_, description=help_)
    add_service_args(p, "encoder")
    _model_options(p)
    p.set_defaults(func=cmd_run_encoder)
    help_ = "Embed texts with the configured encoder and print vectors and cosines."
    p = sub.add_parser("encode", help=help_, description=help_)
    p.add_argument("text", nargs="*", metavar="TEXT", help="texts to embed")
    p.add_argument("--file", metavar="FILE", help="also embed each non-empty line of FILE")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _model_options(p)
    p.set_defaults(func=cmd_encode)
    from segstream_services.items_cli import register as register_items

    register_items(sub)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: segstream run encoder | segstream encode TEXT...")
