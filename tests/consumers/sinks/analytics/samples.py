"""Settings, events and look-ups the analytics tests share (the integration test uses them too)."""
from __future__ import annotations

import socket
import uuid
from pathlib import Path

from consumers.sinks.analytics.store import AnalyticsStore
from pipeline.settings import (
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
    Delivered,
    Envelope,
    Event,
    Received,
    Reply,
    Result,
    Routed,
    SmtpReject,
    StageResult,
    Verdict,
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_settings(home: Path, *, database: str | None = None, kafka: KafkaSettings | None = None, **sink) -> Settings:
    """Settings with a database of its own (tests share one engine) and a free query port."""
    analytics = AnalyticsSinkSettings(
        database=database or f"t_{uuid.uuid4().hex[:10]}", query_port=sink.pop("query_port", free_port()), **sink
    )
    return Settings(
        paths=PathSettings(home=str(home)),
        kafka=kafka or KafkaSettings(),
        topology=TopologySettings(stages=["route"]),
        sinks=SinkSettings(analytics=analytics),
    )


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
            recipients=["bob@school.test"],  # carol was decided for earlier
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
