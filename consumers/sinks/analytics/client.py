"""The `poststelle sql` side: ad-hoc SQL on the server, through the running sink, or on the files.

With a ClickHouse server configured, the query goes straight to it. With the embedded engine, only
one process may open the files, and while the sink runs that is the sink: so the query is posted to
its endpoint (`server`), and the files are opened here only when nothing listens there. If the files
are held and nobody answers (the sink is starting, or another process holds them), that is a
`StoreBusyError` saying so, not ClickHouse's lock message.

Rows come back JSON-shaped (`wire.dumps_result`) on every path, so a script sees the same values
whichever path answered.
"""
from __future__ import annotations

import logging

import httpx
import orjson
from clickhouse_connect.driver.exceptions import Error as ClickHouseError

from consumers.sinks.analytics.store import AnalyticsStore, QueryError, store_target
from consumers.sinks.analytics.wire import MAX_QUERY_BYTES, QUERY_PATH, dumps_result
from pipeline.settings import Settings

__all__ = ["StoreBusyError", "run_sql", "post_query", "HTTP_CLIENT_TIMEOUT"]

log = logging.getLogger(__name__)

HTTP_CLIENT_TIMEOUT = 120.0  # longer than the queries' own limit (store.QUERY_LIMITS)


class StoreBusyError(RuntimeError):
    """The embedded store is held by another process and no query endpoint answers for it."""


def post_query(host: str, port: int, sql: str, timeout: float = HTTP_CLIENT_TIMEOUT) -> tuple[list[str], list[list]]:
    """Ask a running sink's query endpoint; `ConnectionRefusedError` when nothing listens there."""
    body = sql.encode("utf-8")
    if len(body) > MAX_QUERY_BYTES:
        raise QueryError(f"query larger than {MAX_QUERY_BYTES} bytes")
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}{QUERY_PATH}"
    try:
        # plain HTTP on loopback: no proxy from the environment, and no TLS, so no CA bundle to load
        # (loading it took 15 ms per call, ten times the query's round trip)
        with httpx.Client(trust_env=False, verify=False, timeout=timeout) as http:
            response = http.post(url, content=body, headers={"Content-Type": "text/plain; charset=utf-8"})
    except httpx.ConnectError as exc:
        raise ConnectionRefusedError(f"nothing answers on {host}:{port} ({exc})") from None
    except httpx.TimeoutException:
        raise QueryError(f"the analytics sink did not answer within {timeout:g} s") from None
    try:
        data = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise QueryError(f"the query endpoint answered {response.status_code}: {response.text[:200]!r}") from None
    if response.status_code != 200:
        raise QueryError(str(data.get("error", f"the query endpoint answered {response.status_code}")))
    return data["columns"], data["rows"]


def _query_directly(settings: Settings, sql: str) -> tuple[list[str], list[list]]:
    """Open the store in this process, run one query, close it again."""
    try:
        store = AnalyticsStore.open(settings)
    except ClickHouseError as exc:
        if settings.sinks.analytics.url:
            raise QueryError(str(exc).strip()) from None
        raise StoreBusyError(
            f"cannot open the analytics store at {store_target(settings)} ({exc}); another process holds "
            "it and does not answer queries (is the analytics sink starting up?)"
        ) from None
    try:
        columns, rows = store.query(sql)
    finally:
        store.close()
    return columns, orjson.loads(dumps_result(columns, rows))["rows"]


def run_sql(settings: Settings, sql: str) -> tuple[list[str], list[list]]:
    """Run ad-hoc SQL for the CLI: on the server, through the running sink, or on the files.

    Raises `QueryError` with ClickHouse's message when the query is refused, `StoreBusyError` when
    the embedded store is held and nobody answers for it.
    """
    cfg = settings.sinks.analytics
    if cfg.url:
        return _query_directly(settings, sql)
    try:
        return post_query(cfg.query_host, cfg.query_port, sql)
    except ConnectionRefusedError:
        log.debug("no analytics sink answers on %s:%d; opening the store directly", cfg.query_host, cfg.query_port)
    return _query_directly(settings, sql)
