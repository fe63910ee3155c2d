"""/metrics and /healthz listen on loopback unless ``SEGSTREAM_METRICS_ADDR`` says
otherwise (the container image keeps that default; deployments opt in explicitly)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from segstream.metrics import ADDR_ENV, ServiceMetrics


def test_the_default_listen_address_is_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ADDR_ENV, raising=False)
    server = ServiceMetrics("bind-test", CollectorRegistry()).serve(0)
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.shutdown()
        server.server_close()


def test_the_listen_address_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    monkeypatch.setenv(ADDR_ENV, "0.0.0.0")
    server = ServiceMetrics("bind-test", CollectorRegistry()).serve(0)
    try:
        assert server.server_address[0] == "0.0.0.0"
    finally:
        server.shutdown()
        server.server_close()
