"""The read API (FastAPI): users' current segments, the catalog and segment members.

Routes (``/docs`` and ``/openapi.json`` describe them):

- ``GET  /v1/users/{user_id}``               a user's current segment (404 when unassigned)
- ``POST /v1/users:batchGet``                many users at once (one Redis round trip)
- ``GET  /v1/segments``                      the catalog with exact member counts
- ``GET  /v1/segments/{segment_id}``         one segment: label, description, size, lineage
- ``GET  /v1/segments/{segment_id}/members`` a page of member user ids (``?cursor=``)
- ``GET  /metrics``, ``GET /healthz``        Prometheus metrics (own registry), health

With ``api.token`` set, every ``/v1`` route needs ``Authorization: Bearer <token>`` (the
token is a ``SecretStr``: it is compared in constant time and never logged). Malformed
ids and bodies get 400 with a one-line ``detail``; Redis being down gets 503.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from segstream import __version__
from segstream.client import SegmentClient, check_segment_id
from segstream.client_models import MembersPage, Segment, UserSegment
from segstream.config import Settings
from segstream.errors import DataError, InfraError
from segstream_services.api.metrics import ApiMetrics, LatencyMiddleware


class BatchGetRequest(BaseModel):
    """``POST /v1/users:batchGet`` body."""

    user_ids: list[str] = Field(min_length=1, description="user ids (at most api.max_batch)")


class BatchGetResponse(BaseModel):
    users: list[UserSegment] = Field(description="the assigned users, in request order")
    missing: list[str] = Field(description="requested ids with no assignment")


class SegmentList(BaseModel):
    segments: list[Segment]


class Problem(BaseModel):
    detail: str


# module level: FastAPI resolves the endpoints' (string) annotations in this namespace
_BEARER = HTTPBearer(auto_error=False, description="api.token, when configured")
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "malformed id, cursor or body"},
    401: {"model": Problem, "description": "missing or wrong bearer token"},
    503: {"model": Problem, "description": "Redis is not reachable"},
}


def create_app(settings: Settings, client: SegmentClient | None = None,
               metrics: ApiMetrics | None = None) -> FastAPI:
    """The ASGI app; ``client`` defaults to a ``SegmentClient`` on ``settings``."""
    seg = client or SegmentClient(settings)
    metrics = metrics or ApiMetrics()
    token = settings.api.token.get_secret_value().encode() if settings.api.token else None

    def authorize(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]
                  ) -> None:
        if token is None:
            return
        if creds is None or not hmac.compare_digest(creds.credentials.encode(), token):
            raise HTTPException(401, "missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})

    app = FastAPI(title="segstream read API", version=__version__,
                  description="Current interest segments of users, the segment catalog and "
                              "segment members, as the segstream segmenter stores them.")
    app.add_middleware(LatencyMiddleware, metrics=metrics)
    v1 = Depends(authorize)

    @app.exception_handler(DataError)
    async def bad_input(request: Request, exc: DataError) -> JSONResponse:
        return JSONResponse({"detail": str(exc).splitlines()[0]}, status_code=400)

    @app.exception_handler(InfraError)
    async def infra_down(request: Request, exc: InfraError) -> JSONResponse:
        return JSONResponse({"detail": str(exc).splitlines()[0]}, status_code=503)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"detail": f"invalid request at {where}: {first['msg']}"},
                            status_code=400)

    @app.get("/v1/users/{user_id}", response_model=UserSegment, dependencies=[v1],
             responses={404: {"model": Problem, "description": "user not assigned"},
                        **_ERRORS}, tags=["users"])
    def get_user(user_id: str) -> UserSegment:
        """A user's current segment, confidence, memberships, tier path, engagement tier,
        model version and when it was assigned."""
        user = seg.get(user_id)
        if user is None:
            raise HTTPException(404, f"unknown user {user_id!r}: no segment assigned")
        return user

    @app.post("/v1/users:batchGet", response_model=BatchGetResponse, dependencies=[v1],
              responses=_ERRORS, tags=["users"])
    def batch_get(body: BatchGetRequest) -> BatchGetResponse:
        """Many users' current segments in one call (one Redis round trip)."""
        if len(body.user_ids) > settings.api.max_batch:
            raise DataError(f"too many user ids: {len(body.user_ids)} > api.max_batch "
                            f"({settings.api.max_batch})")
        found = seg.get_many(body.user_ids)
        return BatchGetResponse(users=[u for u in found.values() if u is not None],
                                missing=[k for k, u in found.items() if u is None])

    @app.get("/v1/segments", response_model=SegmentList, dependencies=[v1],
             responses=_ERRORS, tags=["segments"])
    def list_segments(include_retired: bool = False) -> SegmentList:
        """Families and their segments with labels, tier paths and exact member counts."""
        return SegmentList(segments=seg.segments(include_retired=include_retired))

    @app.get("/v1/segments/{segment_id}", response_model=Segment, dependencies=[v1],
             responses={404: {"model": Problem, "description": "unknown segment"},
                        **_ERRORS}, tags=["segments"])
    def get_segment(segment_id: str) -> Segment:
        """One segment or family: label, description, size, members and lineage."""
        found = seg.segment(segment_id)
        if found is None:
            raise HTTPException(404, f"unknown segment {segment_id!r}")
        return found

    @app.get("/v1/segments/{segment_id}/members", response_model=MembersPage,
             dependencies=[v1], responses={404: {"model": Problem,
                                                 "description": "unknown segment"},
                                           **_ERRORS}, tags=["segments"])
    def members(segment_id: str, cursor: str | None = None,
                limit: Annotated[int | None, Query(ge=1, le=10_000)] = None) -> MembersPage:
        """A page of the segment's member user ids; follow ``next_cursor`` to the end."""
        check_segment_id(segment_id)
        if segment_id.startswith("f"):
            raise DataError(f"{segment_id} is a family: list the members of its segments "
                            f"(GET /v1/segments/{segment_id} names them)")
        page = seg.members(segment_id, cursor, limit)
        if not page.members and cursor is None and seg.segment(segment_id) is None:
            raise HTTPException(404, f"unknown segment {segment_id!r}")
        return page

    @app.get("/metrics", include_in_schema=False)
    def prometheus() -> Response:
        return Response(metrics.exposition(),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> JSONResponse:
        try:
            seg.redis.ping()
        except Exception as exc:
            return JSONResponse({"service": "api", "status": "unhealthy",
                                 "reason": type(exc).__name__}, status_code=503)
        return JSONResponse({"service": "api", "status": "ok"})

    return app


def app_from_env() -> FastAPI:
    """Factory for other ASGI servers (``uvicorn --factory
    segstream_services.api.app:app_from_env``): settings from the environment and
    ``$SEGSTREAM_CONFIG``."""
    from segstream.config import load_settings

    return create_app(load_settings())
