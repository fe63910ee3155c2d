"""``segstream serve`` (the HTTP read API) and ``segstream export`` (batch audiences)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from segstream.config import Settings
from segstream.errors import ConfigError
from segstream.redis_io import check_redis, redis_client

log = logging.getLogger(__name__)


def register(sub: Any, run_sub: Any) -> None:
    """Add ``serve`` and ``export`` to the ``segstream`` parser."""
    help_ = ("Serve the HTTP read API: users' current segments, the catalog and segment "
             "members (OpenAPI at /docs), with /metrics and /healthz.")
    p = sub.add_parser("serve", help=help_, description=help_,
                       epilog="bearer-token auth: set SEGSTREAM_API__TOKEN (or [api] token "
                              "in the config file); without it the API is open")
    p.add_argument("--host", help="listen address (api.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (api.port, 8080)")
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.set_defaults(func=cmd_serve)
    from segstream_services import export

    export.register(sub)


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    host = args.host or settings.api.host
    port = settings.api.port if args.port is None else args.port
    if not 0 <= port <= 65535:
        raise ConfigError(f"invalid --port {port}: expected 0..65535")
    check_redis(redis_client(settings.redis))
    log.info("read API on http://%s:%d (auth %s)", host, port,
             "bearer token" if settings.api.token else "off")
    from segstream_services.api.app import create_app

    # one process; scale out with more processes behind a load balancer (uvicorn's own
    # --workers mode measured 6x slower here, see bench/bench_api.py)
    uvicorn.run(create_app(settings), host=host, port=port, access_log=args.access_log,
                log_level=settings.log_level.lower(), server_header=False)
    return 0
