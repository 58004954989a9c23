"""The query endpoint: httpx against the ASGI application, and against the real uvicorn server on a
loopback port. Queries run on the real engine (chDB); only the busy and the broken store, which the
real one cannot be made to be on cue, are stand-ins."""
from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from consumers.sinks.analytics.client import post_query
from consumers.sinks.analytics.server import loopback_names, query_app
from consumers.sinks.analytics.store import AsyncAnalyticsStore, QueryError
from pipeline.web import serving
from tests.consumers.sinks.analytics.samples import make_settings, sample_events


@pytest.fixture
async def astore(home: Path) -> AsyncIterator[AsyncAnalyticsStore]:
    st = await AsyncAnalyticsStore.open(make_settings(home))
    yield st
    await st.close()


def asgi_client(app: Any, host: str = "127.0.0.1", raise_app_exceptions: bool = True) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    return httpx.AsyncClient(transport=transport, base_url=f"http://{host}")


class GatedStore:
    """A store whose queries wait until the test opens the gate (to hold queries in flight)."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.waiting = 0

    async def query(self, sql: str) -> tuple[list[str], list[list[Any]]]:
        self.waiting += 1
        await self.gate.wait()
        return ["sql"], [[sql]]


class BrokenStore:
    async def query(self, sql: str) -> tuple[list[str], list[list[Any]]]:
        raise RuntimeError("the disk caught fire")


async def test_a_query_round_trips_as_json(astore: AsyncAnalyticsStore) -> None:
    await astore.insert(sample_events())
    async with asgi_client(query_app(astore)) as http:
        sql = "SELECT type, time, recipients FROM events WHERE type = 'received'"
        response = await http.post("/query", content=sql)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "columns": ["type", "time", "recipients"],
        "rows": [["received", "2025-03-04T05:06:07.089Z", ["bob@school.test", "carol@school.test"]]],
    }


async def test_a_refused_query_is_400_with_clickhouses_message(astore: AsyncAnalyticsStore) -> None:
    async with asgi_client(query_app(astore)) as http:
        syntax = await http.post("/query", content="SELEC 1")
        unknown = await http.post("/query", content="SELECT * FROM nowhere")
        write = await http.post("/query", content="TRUNCATE TABLE events")
        empty = await http.post("/query", content=" ; ")
        after = await http.post("/query", content="SELECT count() AS n FROM events")
    assert syntax.status_code == 400
    assert syntax.json()["error"].startswith("Code: 62.") and "SYNTAX_ERROR" in syntax.json()["error"]
    assert "Traceback" not in syntax.json()["error"]
    assert unknown.status_code == 400 and "UNKNOWN_TABLE" in unknown.json()["error"]
    assert write.status_code == 400 and "readonly" in write.json()["error"]
    assert empty.status_code == 400 and empty.json() == {"error": "empty query"}
    assert after.json() == {"columns": ["n"], "rows": [[0]]}  # nothing was truncated


async def test_request_bodies_are_bounded(astore: AsyncAnalyticsStore) -> None:
    async def chunks(total: int) -> AsyncIterator[bytes]:
        yield b"SELECT 1 -- "
        for _ in range(total // 1000):
            yield b"x" * 1000

    async def slow() -> AsyncIterator[bytes]:
        yield b"SELECT "
        await asyncio.sleep(5)
        yield b"1"

    app = query_app(astore, max_body=4096, body_timeout=0.3)
    async with asgi_client(app) as http:
        declared = await http.post("/query", content=b"SELECT 1 -- " + b"x" * 5000)
        streamed = await http.post("/query", content=chunks(5000))  # chunked: no length declared
        small_chunks = await http.post("/query", content=chunks(3000))
        late = await http.post("/query", content=slow())
        not_text = await http.post("/query", content=b"SELECT '\xff\xfe'")
    assert declared.status_code == 413 and declared.json() == {"error": "query larger than 4096 bytes"}
    assert streamed.status_code == 413 and streamed.json() == {"error": "query larger than 4096 bytes"}
    assert small_chunks.status_code == 200 and small_chunks.json() == {"columns": ["1"], "rows": [[1]]}
    assert late.status_code == 408 and late.json() == {"error": "request not received in time"}
    assert not_text.status_code == 400 and not_text.json() == {"error": "the query is not UTF-8"}


async def test_other_paths_and_methods_are_json_errors_and_stats_are_served(astore: AsyncAnalyticsStore) -> None:
    counters = {"records": 3, "inserted": 2}
    async with asgi_client(query_app(astore, lambda: counters)) as http:
        wrong_method = await http.get("/query")
        nowhere = await http.get("/nothing")
        stats = await http.get("/stats")
        counters["records"] = 4
        later = await http.get("/stats")
        post_stats = await http.post("/stats", content="x")
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert "POST /query" in wrong_method.json()["error"]
    assert nowhere.status_code == 404 and "POST /query" in nowhere.json()["error"]
    assert stats.status_code == 200 and stats.json() == {"records": 3, "inserted": 2}
    assert later.json()["records"] == 4  # read at each request, not copied once
    assert post_stats.status_code == 405


async def test_a_busy_store_is_answered_503_not_queued_without_end() -> None:
    store = GatedStore()
    async with asgi_client(query_app(store, max_waiting=2)) as http:
        first = asyncio.create_task(http.post("/query", content="SELECT 1"))
        second = asyncio.create_task(http.post("/query", content="SELECT 2"))
        while store.waiting < 2:
            await asyncio.sleep(0.01)
        refused = await http.post("/query", content="SELECT 3")
        store.gate.set()
        answers = [(await first).json(), (await second).json()]
        afterwards = await http.post("/query", content="SELECT 4")
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json() == {"error": "the analytics store is busy (2 queries waiting); try again shortly"}
    assert answers == [{"columns": ["sql"], "rows": [["SELECT 1"]]}, {"columns": ["sql"], "rows": [["SELECT 2"]]}]
    assert afterwards.status_code == 200


async def test_an_unexpected_failure_is_500_without_details() -> None:
    async with asgi_client(query_app(BrokenStore()), raise_app_exceptions=False) as http:
        response = await http.post("/query", content="SELECT 1")
    assert response.status_code == 500
    assert response.json() == {"error": "internal error (see the analytics sink's log)"}


@pytest.mark.parametrize("host", ["evil.example.test", "127.0.0.1.nip.io", "192.0.2.1"])
async def test_only_loopback_names_reach_the_endpoint(host: str) -> None:
    """A web page that rebinds its own name to 127.0.0.1 still sends its own name as Host."""
    store = GatedStore()
    store.gate.set()
    app = query_app(store, host="127.0.0.2")
    async with asgi_client(app, host=host) as http:
        assert (await http.post("/query", content="SELECT 1")).status_code == 400
    for name in ("127.0.0.1", "127.0.0.2", "localhost", "[::1]"):
        async with asgi_client(app, host=f"{name}:18123") as http:
            assert (await http.post("/query", content="SELECT 1")).status_code == 200, name
    assert store.waiting == 4
    assert loopback_names("::1") == ["127.0.0.1", "[::1]", "localhost"]


async def test_the_endpoint_on_a_real_loopback_port(astore: AsyncAnalyticsStore) -> None:
    await astore.insert(sample_events())
    async with serving(query_app(astore, max_body=4096), "127.0.0.1", 0, name="test endpoint") as port:
        columns, rows = await asyncio.to_thread(
            post_query, "127.0.0.1", port, "SELECT type, time FROM events WHERE type = 'received'"
        )
        assert (columns, rows) == (["type", "time"], [["received", "2025-03-04T05:06:07.089Z"]])
        with pytest.raises(QueryError, match="readonly"):
            await asyncio.to_thread(post_query, "127.0.0.1", port, "DROP TABLE events")
        with pytest.raises(QueryError, match="query larger than 4096 bytes"):
            await asyncio.to_thread(post_query, "127.0.0.1", port, "SELECT 1 -- " + "x" * 5000)

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            answers = await asyncio.gather(*(http.post("/query", content=f"SELECT {i} AS i") for i in range(5)))
            assert [a.json()["rows"] for a in answers] == [[[i]] for i in range(5)]

        def huge_head() -> bytes:  # a request head beyond pipeline.web.MAX_HEADER_BYTES, still arriving
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                sock.sendall(b"GET /stats HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Filler: " + b"x" * 70_000)
                return sock.recv(100)

        assert (await asyncio.to_thread(huge_head)).startswith(b"HTTP/1.1 400 ")
        assert (await asyncio.to_thread(post_query, "127.0.0.1", port, "SELECT 1 AS one")) == (["one"], [[1]])
    with pytest.raises(ConnectionRefusedError):  # it stopped listening with the block
        await asyncio.to_thread(post_query, "127.0.0.1", port, "SELECT 1")
