"""What the analytics sink's query endpoint and its clients agree on: paths, the size limit, JSON shapes.

The endpoint is served by `consumers.sinks.analytics.server`; its clients are `pipeline.clients.analytics`
(for services such as the portal, and `poststelle sql` / `poststelle trace`).

- ``POST /query`` with one SQL statement as the (UTF-8) body, at most `MAX_QUERY_BYTES`
  → ``200 {"columns": [...], "rows": [[...]]}``, or an error status with ``{"error": "<message>"}``
  (for a refused query, ClickHouse's own message).
- ``GET /stats`` → the sink's counters as one JSON object.

Result values are JSON-shaped the same way on every path (through the sink, or the store opened
directly): datetimes as ISO 8601 strings, UTC as ``Z``; addresses, decimals and the like as strings.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import orjson

__all__ = ["QUERY_PATH", "STATS_PATH", "MAX_QUERY_BYTES", "dumps_result", "dumps_error"]

QUERY_PATH = "/query"
STATS_PATH = "/stats"
MAX_QUERY_BYTES = 1_048_576  # request body limit of the query endpoint


def _iso(value: dt.datetime | dt.date | dt.time) -> str:
    """ISO 8601, UTC as ``Z``, with as many fraction digits as the value has (none, 3 or 6)."""
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value.isoformat()
    micro = value.microsecond
    text = value.isoformat(timespec="milliseconds" if micro and micro % 1000 == 0 else "auto")
    return text.removesuffix("+00:00") + "Z" if text.endswith("+00:00") else text


def _json_default(value: Any) -> Any:
    """Types orjson is not to encode itself: datetimes, addresses, decimals, bytes, sets."""
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return _iso(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, (set, frozenset)):
        return list(value)
    return str(value)  # Decimal, IPv4Address/IPv6Address, timedelta, ...


def _plain(value: Any) -> Any:
    """Slow path for what orjson refuses (integers beyond 64 bits): convert recursively."""
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def dumps_result(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> bytes:
    """``{"columns": [...], "rows": [[...]]}`` with datetimes as ISO 8601 strings."""
    options = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_NON_STR_KEYS
    body = {"columns": list(columns), "rows": rows}
    try:
        return orjson.dumps(body, default=_json_default, option=options)
    except orjson.JSONEncodeError:
        return orjson.dumps(_plain(body), default=_json_default, option=options)


def dumps_error(message: str) -> bytes:
    """``{"error": "<message>"}``."""
    return orjson.dumps({"error": message})
