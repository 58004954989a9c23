"""`run_sql`: through a listening sink, on the files when nothing listens, and a clear answer when
the files are held by a process that does not answer (the engine lock, in a real second process)."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import consumers.sinks.analytics.client as client
from consumers.sinks.analytics.client import post_query, run_sql
from consumers.sinks.analytics.server import query_app
from consumers.sinks.analytics.store import AnalyticsStore, AsyncAnalyticsStore, QueryError
from pipeline.settings import REPO_ROOT
from pipeline.web import serving
from tests.consumers.sinks.analytics.samples import free_port, make_settings, received, sample_events


async def test_run_sql_goes_through_a_listening_sink(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings(home)
    astore = await AsyncAnalyticsStore.open(settings)

    def no_direct(*_args):
        raise AssertionError("must not open the store while the sink listens")

    monkeypatch.setattr(client, "_query_directly", no_direct)
    try:
        async with serving(query_app(astore), "127.0.0.1", settings.sinks.analytics.query_port, name="test"):
            await astore.insert([received(i) for i in range(3)])
            assert await asyncio.to_thread(run_sql, settings, "SELECT count() AS n FROM events") == (["n"], [[3]])
            with pytest.raises(QueryError, match="UNKNOWN_TABLE"):
                await asyncio.to_thread(run_sql, settings, "SELECT * FROM nowhere")
    finally:
        await astore.close()


def test_run_sql_opens_the_store_when_no_sink_listens(home: Path) -> None:
    settings = make_settings(home)  # its query_port has no listener
    st = AnalyticsStore.open(settings)
    try:
        st.insert(sample_events())
    finally:
        st.close()
    columns, rows = run_sql(settings, "SELECT type, time FROM events WHERE type = 'received'")
    assert (columns, rows) == (["type", "time"], [["received", "2025-03-04T05:06:07.089Z"]])
    with pytest.raises(QueryError, match="UNKNOWN_TABLE"):
        run_sql(settings, "SELECT * FROM nowhere")


def test_a_second_process_cannot_open_the_engine(home: Path) -> None:
    """The chDB limitation the query endpoint exists for: one process per data directory."""
    settings = make_settings(home)
    holder = AnalyticsStore.open(settings)  # this process holds the engine, no query endpoint runs
    try:
        script = textwrap.dedent(
            f"""
            import sys
            from consumers.sinks.analytics import run_sql
            from consumers.sinks.analytics.client import StoreBusyError
            from pipeline.settings import AnalyticsSinkSettings, PathSettings, Settings, SinkSettings
            s = Settings(paths=PathSettings(home={str(home)!r}),
                         sinks=SinkSettings(analytics=AnalyticsSinkSettings(
                             database={settings.sinks.analytics.database!r},
                             query_port={settings.sinks.analytics.query_port})))
            try:
                run_sql(s, "SELECT 1")
            except StoreBusyError as exc:
                print("busy:", exc)
                sys.exit(3)
            """
        )
        proc = subprocess.run(
            [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 3, proc.stdout + proc.stderr
        assert "another process holds it" in proc.stdout
    finally:
        holder.close()


def test_a_query_too_large_for_the_endpoint_is_refused_before_sending() -> None:
    port = free_port()  # nothing listens: refusing must not need the endpoint
    with pytest.raises(QueryError, match="query larger than 1048576 bytes"):
        post_query("127.0.0.1", port, "SELECT 1 -- " + "x" * 1_048_576)
    with pytest.raises(ConnectionRefusedError, match=f"nothing answers on 127.0.0.1:{port}"):
        post_query("127.0.0.1", port, "SELECT 1")


async def test_an_answer_that_is_not_json_is_reported_with_its_status() -> None:
    async def not_json(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 502, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"Bad Gateway"})

    async with serving(not_json, "127.0.0.1", 0, name="test") as port:
        with pytest.raises(QueryError, match="answered 502: 'Bad Gateway'"):
            await asyncio.to_thread(post_query, "127.0.0.1", port, "SELECT 1")
