"""Logging set-up shared by every service and the CLI."""

from __future__ import annotations

import json
import logging
import sys
import time

REPEAT_INTERVAL_S = 30.0  # a Kafka client's same message passes at most once per interval


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class _LibraryRepeats(logging.Filter):
    """Lets a Kafka client library's message through once per ``REPEAT_INTERVAL_S`` (by
    logger and message template), noting how many were held back since: a consumer
    waiting for a topic that does not exist yet logs the same error ~10 times a second."""

    def __init__(self) -> None:
        super().__init__()
        self.last: dict[tuple[str, object], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("kafka"):
            return True
        key = (record.name, record.msg)
        now = time.monotonic()
        seen, held = self.last.get(key, (-REPEAT_INTERVAL_S, 0))
        if now - seen < REPEAT_INTERVAL_S:
            self.last[key] = (seen, held + 1)
            return False
        if len(self.last) > 1_000:
            self.last.clear()
        self.last[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} ({held} more like it in the last {now - seen:.0f}s)"
        return True


def configure_logging(level: str = "INFO", as_json: bool = False) -> None:
    """Log to stderr, plain text by default or one JSON object per line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _JsonFormatter() if as_json
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    handler.addFilter(_LibraryRepeats())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("kafka").setLevel(max(logging.WARNING, root.level))
