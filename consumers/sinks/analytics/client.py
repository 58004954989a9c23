"""The `poststelle sql` side: ad-hoc SQL on the server, through the running sink, or on the files.

The first two paths are `pipeline.clients.analytics` (which services use too); opening the files is
the command line's alone, so it lives here, next to the store.

With a ClickHouse server configured, the query goes straight to it. With the embedded engine, only
one process may open the files, and while the sink runs that is the sink: so the query is posted to
its endpoint (`server`), and the files are opened here only when nothing listens there. If the files
are held and nobody answers (the sink is starting, or another process holds them), that is a
`StoreBusyError` saying so, not ClickHouse's lock message.

Rows come back JSON-shaped (`analytics_wire.dumps_result`) on every path, so a script sees the same values
whichever path answered.
"""
from __future__ import annotations

import logging

import orjson
from clickhouse_connect.driver.exceptions import Error as ClickHouseError

from consumers.sinks.analytics.store import AnalyticsStore, store_target
from pipeline.clients.analytics import HTTP_CLIENT_TIMEOUT, QueryError, post_query
from pipeline.clients.analytics_wire import dumps_result
from pipeline.settings import Settings

__all__ = ["StoreBusyError", "QueryError", "run_sql", "post_query", "HTTP_CLIENT_TIMEOUT"]

log = logging.getLogger(__name__)


class StoreBusyError(RuntimeError):
    """The embedded store is held by another process and no query endpoint answers for it."""


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
