"""The query endpoint: `poststelle sql` answered by the process that owns the embedded engine.

chDB lets exactly one process open a data directory, and the analytics sink holds it for as long as
it runs. So the sink also answers ad-hoc SQL, on loopback, through this Starlette application
(served in the sink's own loop by `pipeline.web.serving`); `client.run_sql` asks it first. The
paths and JSON shapes are in `pipeline.clients.analytics_wire`.

What it promises, and why:

- **Read-only, bounded queries.** The store runs them under `store.QUERY_LIMITS` on a session of
  their own; a refused query is ``400 {"error": "<ClickHouse's message>"}``, never a traceback.
- **Bounded requests.** A body over `analytics_wire.MAX_QUERY_BYTES` is ``413`` (refused on its declared
  length before it is read, and counted while it streams in); a body not received within
  `REQUEST_TIMEOUT` is ``408``; a body that is not UTF-8 is ``400``.
- **A busy store says so.** The store answers one call at a time (on its worker thread, shared with
  the sink's inserts). Beyond `MAX_WAITING_QUERIES` waiting queries the answer is
  ``503 {"error": "... busy ..."}`` with ``Retry-After``, not an ever longer queue.
- **Loopback only, and only by a loopback name.** The sink binds ``sinks.analytics.query_host``
  (a loopback address, checked with the settings); requests whose ``Host`` is not a loopback name
  are refused, so a web page cannot reach the endpoint through DNS rebinding.
- **Errors are JSON** ``{"error": ...}``: unknown paths (404), wrong methods (405), and internal
  errors (500, details only in the sink's log).
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from pipeline.clients.analytics import QueryError
from pipeline.clients.analytics_wire import MAX_QUERY_BYTES, QUERY_PATH, STATS_PATH, dumps_error, dumps_result

__all__ = ["QueryStore", "query_app", "loopback_names", "MAX_WAITING_QUERIES", "REQUEST_TIMEOUT"]

MAX_WAITING_QUERIES = 8
REQUEST_TIMEOUT = 30.0  # seconds to receive a whole request body
_HINT = f"POST {QUERY_PATH} with the SQL as body, GET {STATS_PATH}"


class QueryStore(Protocol):
    """What the endpoint needs of a store (`store.AsyncAnalyticsStore`)."""

    async def query(self, sql: str) -> tuple[list[str], list[list[Any]]]: ...


def loopback_names(host: str) -> list[str]:
    """The ``Host`` names a loopback endpoint bound to `host` answers to."""
    bound = f"[{host}]" if ":" in host else host
    return sorted({"localhost", "127.0.0.1", "[::1]", bound})


def _json(status: int, body: bytes, headers: Mapping[str, str] | None = None) -> Response:
    return Response(body, status_code=status, media_type="application/json", headers=headers)


class _Endpoint:
    """The two routes, with the store, the counters and the limits they share."""

    def __init__(self, store: QueryStore, stats: Callable[[], Mapping[str, Any]], max_body: int,
                 max_waiting: int, body_timeout: float) -> None:
        self._store = store
        self._stats = stats
        self._max_body = max_body
        self._max_waiting = max_waiting
        self._body_timeout = body_timeout
        self._waiting = 0

    async def query(self, request: Request) -> Response:
        sql = await self._read_sql(request)
        if self._waiting >= self._max_waiting:
            message = f"the analytics store is busy ({self._waiting} queries waiting); try again shortly"
            return _json(503, dumps_error(message), {"Retry-After": "1"})
        self._waiting += 1
        try:
            columns, rows = await self._store.query(sql)
        except QueryError as exc:
            return _json(400, dumps_error(str(exc)))
        finally:
            self._waiting -= 1
        return _json(200, dumps_result(columns, rows))

    async def stats(self, request: Request) -> Response:
        return _json(200, orjson.dumps(dict(self._stats())))

    async def _read_sql(self, request: Request) -> str:
        """The body as text, refused when too large, too slow or not UTF-8."""
        too_large = HTTPException(413, f"query larger than {self._max_body} bytes")
        declared = request.headers.get("content-length", "0")
        if not declared.isdigit():
            raise HTTPException(400, "bad Content-Length")
        if int(declared) > self._max_body:
            raise too_large
        body = bytearray()
        try:
            async with asyncio.timeout(self._body_timeout):
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > self._max_body:
                        raise too_large
        except TimeoutError:
            raise HTTPException(408, "request not received in time") from None
        except ClientDisconnect:
            raise HTTPException(400, "the client went away") from None
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise HTTPException(400, "the query is not UTF-8") from None


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: f"not found ({_HINT})", 405: f"method not allowed ({_HINT})"}.get(exc.status_code, exc.detail)
    return _json(exc.status_code, dumps_error(message), exc.headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    """The answer to an unexpected exception; Starlette raises it on, and uvicorn logs it."""
    return _json(500, dumps_error("internal error (see the analytics sink's log)"))


def query_app(
    store: QueryStore,
    stats: Callable[[], Mapping[str, Any]] = dict,
    *,
    host: str = "127.0.0.1",
    max_body: int = MAX_QUERY_BYTES,
    max_waiting: int = MAX_WAITING_QUERIES,
    body_timeout: float = REQUEST_TIMEOUT,
) -> Starlette:
    """The ASGI application answering ad-hoc SQL on `store` (and `stats()` at ``GET /stats``).

    `host` is the address it is served on: requests must name it, or another loopback name.
    """
    endpoint = _Endpoint(store, stats, max_body, max_waiting, body_timeout)
    return Starlette(
        routes=[
            Route(QUERY_PATH, endpoint.query, methods=["POST"]),
            Route(STATS_PATH, endpoint.stats, methods=["GET"]),
        ],
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=loopback_names(host))],
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )
