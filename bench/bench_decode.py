"""Event decode + validate throughput: ``segstream.events.parse_event`` vs an earlier version.

The peer is the same function as of a git revision (default ``ee1119d``: ``json.loads`` and
field-by-field checks), loaded from ``git show`` into a throw-away module, so both run on
the same records in the same process. Three record sets: the synthetic stream's valid
events; the same with its malformed kinds mixed in at 1%; valid events with non-ASCII ids
and titles (``\\u`` escapes, json's default). Each set is timed in alternating rounds
(best round per side) so machine noise hits both alike.

    .venv/bin/python bench/bench_decode.py --users 400 --rounds 5

Records the old version cannot survive (it raises something other than ``InvalidEvent``)
are left out of the sets and counted in the output.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from segstream.config import DEFAULT_EVENT_TYPES
from segstream.errors import InvalidEvent
from segstream.events import parse_event
from segstream.synthetic import SyntheticStream

Parse = Callable[[bytes, Any], Any]


def load_revision(rev: str) -> types.ModuleType:
    """``segstream.events`` as of ``rev``, as a module of its own."""
    root = Path(__file__).resolve().parent.parent
    try:
        source = subprocess.run(["git", "show", f"{rev}:shared/segstream/events.py"],
                                cwd=root, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        sys.exit(f"bench_decode: cannot read events.py at {rev} from git ({exc})")
    module = types.ModuleType(f"events_{rev}")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"events@{rev}", "exec"), module.__dict__)
    return module


def survives(parse: Parse, raw: bytes) -> bool:
    try:
        parse(raw, DEFAULT_EVENT_TYPES)
    except InvalidEvent:
        pass
    except Exception:  # the point: which records crash the old version
        return False
    return True


def rate(parse: Parse, records: list[bytes]) -> float:
    types_ = DEFAULT_EVENT_TYPES
    refused = 0
    start = time.perf_counter()
    for raw in records:
        try:
            parse(raw, types_)
        except InvalidEvent:
            refused += 1
    return len(records) / (time.perf_counter() - start)


def non_ascii(records: list[bytes]) -> list[bytes]:
    out = []
    for raw in records:
        event = json.loads(raw)
        event["user_id"] = "Zoë-" + event["user_id"]
        event["title"] = "Crème brûlée — " + event.get("title", "")
        out.append(json.dumps(event).encode())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--users", type=int, default=400)
    p.add_argument("--days", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--rev", default="ee1119d", help="git revision of the peer (events.py)")
    args = p.parse_args()

    old = load_revision(args.rev)
    end_ms = 1_795_857_300_000
    valid = [v for _, v in SyntheticStream(users=args.users, days=args.days, seed=7,
                                           end_ms=end_ms).records() if v is not None]
    mixed_all = [v if v is not None else b"" for _, v in SyntheticStream(
        users=args.users, days=args.days, seed=7, end_ms=end_ms, malformed=0.01).records()]
    mixed = [v for v in mixed_all if survives(old.parse_event, v)]
    sets = {"valid": valid, "mixed-1%-malformed": mixed, "non-ascii": non_ascii(valid)}

    same = sum(old.parse_event(v, DEFAULT_EVENT_TYPES).to_dict()
               == parse_event(v, DEFAULT_EVENT_TYPES).to_dict() for v in valid[:5000])
    print(f"records: {len(valid)} valid; mixed set {len(mixed)} "
          f"({len(mixed_all) - len(mixed)} left out: they crash {args.rev}); "
          f"identical events on {same}/{min(5000, len(valid))} valid records")
    print(f"{'set':<20} {args.rev + ' ev/s':>14} {'now ev/s':>12} {'ratio':>7}")
    for name, records in sets.items():
        best_old = best_new = 0.0
        for _ in range(args.rounds):
            best_old = max(best_old, rate(old.parse_event, records))
            best_new = max(best_new, rate(parse_event, records))
        print(f"{name:<20} {best_old:>14,.0f} {best_new:>12,.0f} {best_new / best_old:>6.2f}x")


if __name__ == "__main__":
    main()
