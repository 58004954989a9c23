"""A read-only client of the analytics store, for any layer above the runtime (the portal, the CLI).

Two ways to the store, the same answers:

- a ClickHouse **server** (``[sinks.analytics] url``): queried directly, read-only and bounded
  (`QUERY_LIMITS`);
- the embedded **chDB** engine: only one process may open its files, and while the analytics sink
  runs that is the sink, so the query is posted to the sink's loopback endpoint (`post_query`).

When nothing answers for the embedded engine, `query_analytics` raises `AnalyticsUnavailable`; the
command line may then open the files itself (`consumers.sinks.analytics.run_sql`), a service may not
(it would take the engine away from the sink). Rows come back JSON-shaped (`analytics_wire`) on every
path: datetimes as ISO 8601 strings, UTC as ``Z``.
"""
from __future__ import annotations

from typing import Any

import httpx
import orjson

from pipeline.clients.analytics_wire import MAX_QUERY_BYTES, QUERY_PATH, dumps_result
from pipeline.settings import Settings

__all__ = ["QueryError", "AnalyticsUnavailable", "QUERY_LIMITS", "HTTP_CLIENT_TIMEOUT", "post_query",
           "query_server", "query_analytics", "sql_string"]

HTTP_CLIENT_TIMEOUT = 120.0  # longer than the queries' own limit (QUERY_LIMITS)

# ad-hoc SQL: read-only (settings may change, except readonly), bounded in time and result size
QUERY_LIMITS: dict[str, Any] = {
    "readonly": 2,
    "max_execution_time": 60,
    "max_result_rows": 100_000,
    "result_overflow_mode": "throw",
}


class QueryError(Exception):
    """ClickHouse refused a query; the message is ClickHouse's own."""


class AnalyticsUnavailable(ConnectionRefusedError):
    """Nothing answers for the analytics store (the sink is not running, or the server is down)."""


def sql_string(value: str) -> str:
    """`value` as a ClickHouse string literal (quotes and backslashes escaped)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def post_query(host: str, port: int, sql: str, timeout: float = HTTP_CLIENT_TIMEOUT) -> tuple[list[str], list[list]]:
    """Ask a running sink's query endpoint; `AnalyticsUnavailable` when nothing listens there."""
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
        raise AnalyticsUnavailable(f"nothing answers on {host}:{port} ({exc})") from None
    except httpx.TimeoutException:
        raise QueryError(f"the analytics sink did not answer within {timeout:g} s") from None
    try:
        data = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise QueryError(f"the query endpoint answered {response.status_code}: {response.text[:200]!r}") from None
    if response.status_code != 200:
        raise QueryError(str(data.get("error", f"the query endpoint answered {response.status_code}")))
    return data["columns"], data["rows"]


def query_server(url: str, database: str, sql: str) -> tuple[list[str], list[list]]:
    """One read-only query on a ClickHouse server, on a session of its own."""
    import clickhouse_connect
    from clickhouse_connect.driver.exceptions import Error as ClickHouseError

    try:
        client = clickhouse_connect.get_client(dsn=url, tz_mode="aware", settings=QUERY_LIMITS)
    except ClickHouseError as exc:
        raise AnalyticsUnavailable(f"the analytics server at {url} does not answer ({str(exc).strip()})") from None
    try:
        client.database = database
        result = client.query(sql.strip().rstrip(";"))
        columns, rows = list(result.column_names), [list(row) for row in result.result_rows]
    except ClickHouseError as exc:
        raise QueryError(str(exc).strip()) from None
    finally:
        client.close()
    return columns, orjson.loads(dumps_result(columns, rows))["rows"]


def query_analytics(settings: Settings, sql: str) -> tuple[list[str], list[list]]:
    """Run one read-only query on the configured store: the server, else the running sink's endpoint.

    Raises `QueryError` when ClickHouse refuses it, `AnalyticsUnavailable` when nobody answers."""
    cfg = settings.sinks.analytics
    if cfg.url:
        return query_server(cfg.url, cfg.database, sql)
    return post_query(cfg.query_host, cfg.query_port, sql)
