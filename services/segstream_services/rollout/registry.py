"""The model registry (``Keys.model_registry``) and the encoder workers' ``ModelWatcher``.

The registry hash names the active, previous and target model (path and version) and the
rollout phase; every process and ``segstream model status`` reads it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from segstream.encoding import Encoder
from segstream.keys import Keys
from segstream.redis_io import decode_fields

log = logging.getLogger(__name__)


class Registry:
    """The registry hash: active, previous and target model, and the phase."""

    FIELDS = ("active_path", "active_version", "previous_path", "previous_version",
              "target_path", "target_version", "phase", "users", "changed", "changed_share",
              "bound_share", "updated_ms")

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.key = keys.model_registry()

    def read(self) -> dict[str, str]:
        raw = self.client.hgetall(self.key)
        return decode_fields(raw)

    def set(self, **values: Any) -> None:
        values["updated_ms"] = int(time.time() * 1000)
        self.client.hset(self.key, mapping={k: str(v) for k, v in values.items()})


class ModelWatcher:
    """Keeps an encoder worker on the registry's active model: before a claim, at most
    once per ``every_s``, it loads the active version when it differs (no restart).

    A model it cannot load (the registry names a path that does not exist on this host,
    a broken directory) does not stop the worker: it keeps serving the current model,
    ``failure`` holds the reason (the worker's ``/healthz`` reports it), and the load is
    tried again after ``retry_s``."""

    def __init__(self, client: redis.Redis, keys: Keys, every_s: float = 1.0,
                 load: Callable[[str], Encoder] | None = None, retry_s: float = 60.0,
                 on_failure: Callable[[], None] | None = None) -> None:
        self.registry = Registry(client, keys)
        self.every_s = every_s
        self.retry_s = retry_s
        self.load = load or (lambda path: Encoder(path))
        self.on_failure = on_failure
        self.failure: str | None = None
        self._at = 0.0
        self._failed: tuple[str, float] | None = None  # (version, monotonic time)

    def check(self, worker: Any) -> bool:
        """Swap ``worker.encoder`` (and its text cache) when the active version moved."""
        if time.monotonic() - self._at < self.every_s:
            return False
        self._at = time.monotonic()
        state = self.registry.read()
        version, path = state.get("active_version"), state.get("active_path")
        if not version or not path or version == worker.encoder.model_version:
            self.failure = None
            return False
        if self._failed and self._failed[0] == version and \
                time.monotonic() - self._failed[1] < self.retry_s:
            return False
        try:
            encoder = self.load(path)
            if encoder.model_version != version:
                raise ValueError(f"it has version {encoder.model_version}")
        except Exception as exc:  # any failure to load: keep serving the current model
            self._failed = (version, time.monotonic())
            self.failure = (f"cannot load model {version} from {path}: "
                            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                            f"; serving {worker.encoder.model_version}")
            log.error("%s", self.failure)
            if self.on_failure is not None:
                self.on_failure()
            return False
        self._failed, self.failure = None, None
        worker.swap_encoder(encoder)
        log.info("encoder switched to %s without a restart", version)
        return True
