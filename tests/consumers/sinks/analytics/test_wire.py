"""The JSON shapes the endpoint and `run_sql` share: values a ClickHouse result can hold, as JSON."""
from __future__ import annotations

import datetime as dt
import decimal
import ipaddress
import uuid

import orjson

from pipeline.clients.analytics_wire import dumps_error, dumps_result


def test_result_values_become_json_the_same_way_everywhere() -> None:
    utc = dt.timezone.utc
    row = [
        dt.datetime(2025, 3, 4, 5, 6, 7, 89_000, tzinfo=utc),  # DateTime64(3): milliseconds, Z
        dt.datetime(2025, 3, 4, 5, 6, 7, 123_456, tzinfo=utc),  # DateTime64(6): microseconds
        dt.datetime(2025, 3, 4, 5, 6, 7, tzinfo=utc),  # DateTime: whole seconds
        dt.datetime(2025, 3, 4, 5, 6, 7, tzinfo=dt.timezone(dt.timedelta(hours=1))),  # not UTC: keeps its offset
        dt.date(2025, 3, 4),
        ipaddress.ip_address("192.0.2.10"),
        ipaddress.ip_address("2001:db8::1"),
        decimal.Decimal("12.50"),
        uuid.UUID("01890a5d-ac96-774b-bcce-b302099a8057"),
        b"caf\xc3\xa9 \xff",
        frozenset({"x"}),
        2**70,  # UInt128 and friends: beyond orjson's integers
        [2**64, -(2**63) - 1, 3],
        {"k": 2**65},
        None,
        1.5,
    ]
    data = orjson.loads(dumps_result(["a"] * len(row), [row]))
    assert data["columns"] == ["a"] * len(row)
    assert data["rows"] == [[
        "2025-03-04T05:06:07.089Z",
        "2025-03-04T05:06:07.123456Z",
        "2025-03-04T05:06:07Z",
        "2025-03-04T05:06:07+01:00",
        "2025-03-04",
        "192.0.2.10",
        "2001:db8::1",
        "12.50",
        "01890a5d-ac96-774b-bcce-b302099a8057",
        "café \ufffd",
        ["x"],
        str(2**70),
        [str(2**64), str(-(2**63) - 1), 3],
        {"k": str(2**65)},
        None,
        1.5,
    ]]


def test_errors_are_one_json_object() -> None:
    assert orjson.loads(dumps_error('Code: 62. "quoted"')) == {"error": 'Code: 62. "quoted"'}
