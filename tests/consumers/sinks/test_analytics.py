"""The analytics sink against the real engine (chDB) and, for the integration test, the real broker.

chDB hosts one engine per process, at one path: every test here shares the module-scoped `home`
(and so one ``<home>/clickhouse`` engine) and isolates itself with a database of its own. What needs
a second process (the engine lock) runs in a subprocess.
"""
from __future__ import annotations

import asyncio
import http.client
import socket
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import orjson
import pytest

from consumers.sinks.analytics import (
    MIGRATIONS,
    AnalyticsStore,
    AsyncAnalyticsStore,
    QueryError,
    QueryServer,
    SinkStats,
    event_row,
    post_query,
    run_sql,
)
from pipeline.settings import (
    REPO_ROOT,
    AnalyticsSinkSettings,
    KafkaSettings,
    PathSettings,
    Settings,
    SinkSettings,
    TopologySettings,
)
from schemas.events import (
    BlobRef,
    Client,
    Deadlettered,
    Delivered,
    Envelope,
    Event,
    Received,
    Rejected,
    Reply,
    Result,
    Routed,
    SmtpCheck,
    SmtpReject,
    StageResult,
    Verdict,
    decode_event,
)

# ---- helpers -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("analytics-home")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_settings(home: Path, *, database: str | None = None, kafka: KafkaSettings | None = None, **sink) -> Settings:
    analytics = AnalyticsSinkSettings(
        database=database or f"t_{uuid.uuid4().hex[:10]}", query_port=sink.pop("query_port", free_port()), **sink
    )
    return Settings(
        paths=PathSettings(home=str(home)),
        kafka=kafka or KafkaSettings(),
        topology=TopologySettings(stages=["route"]),
        sinks=SinkSettings(analytics=analytics),
    )


@pytest.fixture
def store(home: Path):
    st = AnalyticsStore.open(make_settings(home))
    yield st
    st.close()


def received(i: int = 0, **kw) -> Received:
    return Received(
        message_id=kw.pop("message_id", f"msg-{i}"),
        envelope=Envelope(mail_from=f"alice{i}@example.test", rcpt_to=["bob@school.test", "carol@school.test"]),
        client=Client(ip="192.0.2.10", port=40000 + i),
        blob=BlobRef(sha256="ab" * 32, size=1234 + i),
        session_id=f"sess-{i}",
        **kw,
    )


def sample_events() -> list[Event]:
    """One message's trail plus an SMTP-time rejection, with fixed times."""
    msg = received(1, time="2025-03-04T05:06:07.089Z")
    return [
        msg,
        StageResult(
            message_id=msg.message_id,
            time="2025-03-04T05:06:07.120Z",
            result=Result(stage="spam", verdict=Verdict.FAIL, score=7.5, duration_ms=12.5),
            message=msg,
            recipients=list(msg.envelope.rcpt_to),
        ),
        Routed(message_id=msg.message_id, destination="lmtp", recipients=["bob@school.test"], message=msg),
        Delivered(
            message_id=msg.message_id,
            destination="lmtp",
            recipient="bob@school.test",
            attempt=2,
            reply=Reply(code=250, enhanced="2.0.0", text="Saved"),
        ),
        SmtpReject(
            session_id="sess-9",
            client_ip="198.51.100.7",
            phase="rcpt",
            check="relay",
            reason_code="relay_denied",
            reply=Reply(code=554, enhanced="5.7.1", text="Relay access denied"),
            sender="spammer@example.test",
            recipient="victim@elsewhere.test",
        ),
    ]


def row_by_id(st: AnalyticsStore, event_id: str, columns: str) -> dict:
    names, rows = st.query(f"SELECT {columns} FROM events WHERE id = '{event_id}'")
    assert len(rows) == 1
    return dict(zip(names, rows[0], strict=True))


def http_request(port: int, method: str, path: str, body: bytes = b"") -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        return response.status, orjson.loads(response.read())
    finally:
        conn.close()


# ---- schema and inserts ------------------------------------------------------------------------


def test_migrations_are_versioned_and_idempotent(home: Path) -> None:
    settings = make_settings(home)
    first = AnalyticsStore.open(settings)
    try:
        assert first.applied_versions() == [m.version for m in MIGRATIONS]
    finally:
        first.close()
    again = AnalyticsStore.open(settings)
    try:
        assert again.migrate() == []
        _, rows = again.query("SELECT version, count() FROM schema_migrations GROUP BY version ORDER BY version")
        assert rows == [[m.version, 1] for m in MIGRATIONS]
        _, tables = again.query("SELECT name FROM system.tables WHERE database = currentDatabase() ORDER BY name")
        names = {t[0] for t in tables}
        assert {"events", "schema_migrations", "rejections_by_reason", "stage_verdicts"} <= names
    finally:
        again.close()


def test_the_same_events_twice_count_once(store: AnalyticsStore) -> None:
    events = [received(i) for i in range(50)]
    assert store.insert(events + events[:10]) == 50  # duplicates within the batch
    assert store.insert(events) == 0  # a replay
    fresh = [received(i) for i in range(50, 60)]
    assert store.insert(events[:5] + fresh) == 10  # partly new
    _, rows = store.query("SELECT count(), uniqExact(id) FROM events")  # no FINAL needed
    assert rows == [[60, 60]]


def test_insert_of_nothing_writes_nothing(store: AnalyticsStore) -> None:
    assert store.insert([]) == 0


def test_flattening_of_each_event_type(store: AnalyticsStore) -> None:
    msg, stage, routed, delivered, smtp_reject = sample_events()
    rejected = Rejected(
        message_id=msg.message_id,
        stage="virus",
        reason="Eicar-Test-Signature",
        recipients=["bob@school.test"],
        message=msg,
    )
    dead = Deadlettered(
        consumer="spam", source_topic="poststelle.checked.virus", partition=1, offset=7, reason="exception", error="x"
    )
    assert store.insert([msg, stage, routed, delivered, smtp_reject, rejected, dead]) == 7

    row = row_by_id(store, msg.id, "type, message_id, time, sender, recipients, client_ip, size, session_id")
    assert row["type"] == "received" and row["message_id"] == "msg-1"
    assert row["time"].isoformat() == "2025-03-04T05:06:07.089000+00:00"
    assert row["sender"] == "alice1@example.test"
    assert row["recipients"] == ["bob@school.test", "carol@school.test"]
    assert (row["client_ip"], row["size"], row["session_id"]) == ("192.0.2.10", 1235, "sess-1")

    row = row_by_id(store, stage.id, "stage, verdict, score, duration_ms, sender")
    assert row == {
        "stage": "spam", "verdict": "fail", "score": 7.5, "duration_ms": 12.5, "sender": "alice1@example.test"
    }

    row = row_by_id(store, routed.id, "destination, recipients")
    assert row == {"destination": "lmtp", "recipients": ["bob@school.test"]}

    row = row_by_id(store, delivered.id, "destination, recipient, attempt, reply_code, reply_enhanced, reply_text")
    assert row == {
        "destination": "lmtp",
        "recipient": "bob@school.test",
        "attempt": 2,
        "reply_code": 250,
        "reply_enhanced": "2.0.0",
        "reply_text": "Saved",
    }

    columns = "check_name, reason_code, phase, reply_code, reply_enhanced, sender, recipient, client_ip, session_id"
    row = row_by_id(store, smtp_reject.id, columns)
    assert row == {
        "check_name": "relay",
        "reason_code": "relay_denied",
        "phase": "rcpt",
        "reply_code": 554,
        "reply_enhanced": "5.7.1",
        "sender": "spammer@example.test",
        "recipient": "victim@elsewhere.test",
        "client_ip": "198.51.100.7",
        "session_id": "sess-9",
    }

    assert row_by_id(store, rejected.id, "stage, reason, recipients") == {
        "stage": "virus",
        "reason": "Eicar-Test-Signature",
        "recipients": ["bob@school.test"],
    }
    assert row_by_id(store, dead.id, "stage, reason") == {"stage": "spam", "reason": "exception"}

    payload = row_by_id(store, stage.id, "payload")["payload"]
    assert decode_event(payload) == stage

    _, views = store.query("SELECT source, cause, events FROM rejections_by_reason ORDER BY source")
    assert views == [["relay", "relay_denied", 1], ["virus", "Eicar-Test-Signature", 1]]


def test_a_bad_time_falls_back_to_the_id_time_deterministically() -> None:
    event = received(1, time="yesterday")
    assert event_row(event) == event_row(event)  # a replay makes the same row
    from schemas.ids import id_time_ms

    row_time = event_row(event)[4]
    assert int(row_time.timestamp() * 1000) == id_time_ms(event.id)


def test_out_of_range_integers_are_clamped_not_fatal(store: AnalyticsStore) -> None:
    # the extremes decode_event lets through (orjson reads integers up to 2**64 - 1)
    odd = Delivered(destination="lmtp", recipient="x@school.test", attempt=-3, reply=Reply(code=2**64 - 1))
    assert store.insert([odd]) == 1
    assert row_by_id(store, odd.id, "attempt, reply_code") == {"attempt": 0, "reply_code": 65535}


def test_ad_hoc_sql_is_read_only(store: AnalyticsStore) -> None:
    with pytest.raises(QueryError, match="readonly"):
        store.query("DROP TABLE events")
    with pytest.raises(QueryError, match="SET"):
        store.query("SET max_result_rows = 0")
    with pytest.raises(QueryError, match="empty"):
        store.query("  ;")
    assert store.query("SELECT 1 AS one;") == (["one"], [[1]])


# ---- the query server --------------------------------------------------------------------------


async def test_query_server_round_trip_and_errors(home: Path) -> None:
    settings = make_settings(home)
    astore = await AsyncAnalyticsStore.open(settings)
    server = QueryServer(astore, "127.0.0.1", 0, SinkStats(records=3), max_body=4096)
    await server.start()
    try:
        await astore.insert(sample_events())
        columns, rows = await asyncio.to_thread(
            post_query, "127.0.0.1", server.port, "SELECT type, time, recipients FROM events WHERE type = 'received'"
        )
        assert columns == ["type", "time", "recipients"]
        assert rows == [["received", "2025-03-04T05:06:07.089Z", ["bob@school.test", "carol@school.test"]]]

        status, body = await asyncio.to_thread(http_request, server.port, "POST", "/query", b"SELEC 1")
        assert status == 400
        assert body["error"].startswith("Code: 62.") and "SYNTAX_ERROR" in body["error"]
        assert "Traceback" not in body["error"]

        status, body = await asyncio.to_thread(http_request, server.port, "POST", "/query", b"SELECT * FROM nowhere")
        assert status == 400 and "UNKNOWN_TABLE" in body["error"]

        with pytest.raises(QueryError, match="readonly"):
            await asyncio.to_thread(post_query, "127.0.0.1", server.port, "TRUNCATE TABLE events")

        too_large = b"SELECT 1 -- " + b"x" * 5000
        status, body = await asyncio.to_thread(http_request, server.port, "POST", "/query", too_large)
        assert status == 413
        status, _ = await asyncio.to_thread(http_request, server.port, "GET", "/query")
        assert status == 405
        status, _ = await asyncio.to_thread(http_request, server.port, "GET", "/nothing")
        assert status == 404
        status, body = await asyncio.to_thread(http_request, server.port, "GET", "/stats")
        assert status == 200 and body["records"] == 3
    finally:
        await server.close()
        await astore.close()


async def test_run_sql_goes_through_a_listening_sink(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import consumers.sinks.analytics as analytics

    settings = make_settings(home)
    astore = await AsyncAnalyticsStore.open(settings)
    server = QueryServer(astore, "127.0.0.1", settings.sinks.analytics.query_port)
    await server.start()

    def no_direct(*_args):
        raise AssertionError("must not open the store while the sink listens")

    monkeypatch.setattr(analytics, "_query_directly", no_direct)
    try:
        await astore.insert([received(i) for i in range(3)])
        assert await asyncio.to_thread(run_sql, settings, "SELECT count() AS n FROM events") == (["n"], [[3]])
    finally:
        await server.close()
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
    """The chDB limitation the query server exists for: one process per data directory."""
    settings = make_settings(home)
    holder = AnalyticsStore.open(settings)  # this process holds the engine, no query server runs
    try:
        script = textwrap.dedent(
            f"""
            import sys
            from consumers.sinks.analytics import StoreBusyError, run_sql
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


def _reject(check: str, reason: str, code: int = 554) -> SmtpReject:
    return SmtpReject(session_id="s", client_ip="127.0.1.66", phase="rcpt", check=check, reason_code=reason,
                      reply=Reply(code=code, enhanced=f"{code // 100}.7.1", text="no"))


def _greylist(result: str) -> SmtpCheck:
    return SmtpCheck(session_id="s", client_ip="127.0.2.10", phase="rcpt", check="greylist", result=result,
                     sender="a@good.test", recipient="max.mustermann@school.test")


def test_smtp_rejections_give_the_share_of_each_reason(store: AnalyticsStore) -> None:
    events = ([_reject("dnsbl", "dnsbl_listed") for _ in range(8)] + [_reject("fcrdns", "fcrdns_failed", 550)]
              + [_reject("recipient", "unknown_recipient", 550)])  # each with its own event id
    store.insert(events)
    _, rows = store.query("SELECT check_name, reason_code, refusals, pct FROM smtp_rejections ORDER BY refusals DESC, "
                          "check_name")
    assert rows == [["dnsbl", "dnsbl_listed", 8, 80.0], ["fcrdns", "fcrdns_failed", 1, 10.0],
                    ["recipient", "unknown_recipient", 1, 10.0]]


def test_greylisting_view_reports_delayed_and_passed_after_retry(store: AnalyticsStore) -> None:
    results = ["delayed"] * 4 + ["passed_after_retry"] * 3 + ["auto_whitelisted"] * 2 + ["whitelisted"]
    store.insert([_greylist(r) for r in results])
    _, rows = store.query("SELECT decisions, delayed, passed_after_retry, whitelisted, delayed_pct, "
                          "passed_after_retry_pct FROM greylisting")
    assert rows == [[10, 4, 3, 3, 40.0, 75.0]]
