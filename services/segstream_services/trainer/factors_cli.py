"""``segstream factors build``: item co-occurrence factors in a model directory.

The directory is the base encoder's (linked) plus ``item_factors.npz``
(``segstream.item_factors``); ``--model DIR`` (fit, eval) and ``segstream model rollout
DIR`` (the running services) use it as any model directory.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from segstream.config import Settings
from segstream.errors import ConfigError

DESCRIPTION = (
    "Compute each item's co-occurrence factor (TruncatedSVD of the user x item log-tf-idf "
    "matrix of the events, as the co-occurrence baseline) and write a model directory that "
    "gives every item the vector concat(unit(text), WEIGHT * unit(factor)). Roll it out with "
    "`segstream model rollout DIR`; measure it with `segstream eval --model DIR`.")


def register_factors(sub: Any) -> None:
    """Add ``segstream factors build``."""
    from segstream.item_factors import DEFAULT_DIMS, DEFAULT_WEIGHT
    from segstream_services.source_args import add_source_args

    p = sub.add_parser("factors", help="Item co-occurrence factors for the interest view.")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="build")
    b = verbs.add_parser("build", help="build a model directory with item factors",
                         description=DESCRIPTION)
    add_source_args(b)
    b.add_argument("--until", metavar="TIME", help="use only events before TIME (ISO), e.g. "
                   "the first split `eval` reports")
    b.add_argument("--base", metavar="DIR", help="base model directory (default: "
                   "settings.encoder.model_path, i.e. all-MiniLM-L6-v2)")
    b.add_argument("--out", metavar="DIR", required=True, help="the new model directory "
                   "(must not exist, or be empty)")
    b.add_argument("--copy", action="store_true", help="copy the base model's files into "
                   "DIR instead of linking them (a directory that outlives the base's path)")
    b.add_argument("--dims", type=int, default=DEFAULT_DIMS,
                   help=f"factor dimensions ({DEFAULT_DIMS})")
    b.add_argument("--weight", type=float, default=DEFAULT_WEIGHT, help="beta, the factor "
                   f"part's weight beside the unit text vector ({DEFAULT_WEIGHT:g})")
    b.add_argument("--plain", action="store_true", help="factors not scaled by the "
                   "singular values (scaled is what eval's tuning chose)")
    b.add_argument("--seed", type=int, default=0, help="SVD seed (0)")
    b.set_defaults(func=cmd_factors_build)


def cmd_factors_build(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console

    from segstream import item_factors
    from segstream.encoding import Encoder, default_model_path
    from segstream_services.offline.common import load_events, parse_time

    console = Console(stderr=True)
    if args.dims < 1:
        raise ConfigError("--dims must be at least 1")
    if not args.weight > 0:
        raise ConfigError("--weight must be > 0")
    if not Path(args.file).is_file():
        raise ConfigError(f"no such file: {args.file}")
    until = parse_time(args.until, "--until") if args.until else None
    base_dir = Path(args.base or settings.encoder.model_path or default_model_path())
    if (base_dir / item_factors.FACTORS_FILE).exists():
        raise ConfigError(f"{base_dir} already carries item factors: give its base model")
    out = Path(args.out)
    item_factors.require_empty_dir(out, f"--out {out}")
    with console.status("reading events"):
        events, report = load_events(args, settings)
    used = [e for e in events if until is None or e.ts_ms < until]
    if not used:
        raise ConfigError(f"--until {args.until}: no event before it")
    with console.status(f"factorising {len(used):,} events"):
        factors = item_factors.from_events(
            used, args.dims, args.weight, not args.plain, args.seed,
            {"source": str(args.file), "events": len(used), "until": args.until or "-"})
    with console.status("reading the base model"):
        base = Encoder(base_dir, name=None if args.base else settings.encoder.model_name)
    item_factors.write_model_dir(base.path, out, factors, base.name, base.model_version,
                                 copy=args.copy)
    console.print(f"{len(used):,} of {report.rows:,} rows → {len(factors):,} items with a "
                  f"factor ({factors.dim} dims, weight {factors.weight:g}) in {out}")
    print(out)
    return 0
