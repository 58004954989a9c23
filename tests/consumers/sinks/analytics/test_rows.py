"""Events → rows: each type's columns (checked on the real engine), deterministic times, clamped
integers, and an event type without a mapping stored with its common columns only."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import orjson
import pytest

from consumers.sinks.analytics.rows import Origin, event_row
from consumers.sinks.analytics.schema import EVENT_COLUMNS
from consumers.sinks.analytics.store import AnalyticsStore
from schemas.events import DeadletterReplayed, Deadlettered, Delivered, Event, Rejected, Reply, decode_event
from schemas.ids import id_time_ms
from tests.consumers.sinks.analytics.samples import received, row_by_id, sample_events


@dataclass(frozen=True, slots=True, kw_only=True)
class NewerEvent(Event):
    """An event type newer than the row mapping (added to `schemas.events` before a mapping here)."""

    type: Literal["newer_than_the_mapping"] = "newer_than_the_mapping"
    consumer: str
    recipients: list[str]


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
    replayed = DeadletterReplayed(deadletter_id=dead.id, source_topic="poststelle.checked.virus", partition=1,
                                  offset=12)
    assert store.insert([msg, stage, routed, delivered, smtp_reject, rejected, dead, replayed]) == 8

    row = row_by_id(store, msg.id, "type, message_id, time, sender, recipients, client_ip, size, session_id")
    assert row["type"] == "received" and row["message_id"] == "msg-1"
    assert row["time"].isoformat() == "2025-03-04T05:06:07.089000+00:00"
    assert row["sender"] == "alice1@example.test"
    assert row["recipients"] == ["bob@school.test", "carol@school.test"]
    assert (row["client_ip"], row["size"], row["session_id"]) == ("192.0.2.10", 1235, "sess-1")

    row = row_by_id(store, stage.id, "stage, verdict, score, duration_ms, sender, recipients")
    assert row == {
        "stage": "spam", "verdict": "fail", "score": 7.5, "duration_ms": 12.5, "sender": "alice1@example.test",
        "recipients": ["bob@school.test"],  # the recipients the stage passed on, not the whole envelope
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
    assert row_by_id(store, replayed.id, "type, reason") == {"type": "deadletter_replayed",
                                                            "reason": f"replayed {dead.id}"}

    payload = row_by_id(store, stage.id, "payload")["payload"]
    assert decode_event(payload) == stage

    _, views = store.query("SELECT source, cause, events FROM rejections_by_reason ORDER BY source")
    assert views == [["relay", "relay_denied", 1], ["virus", "Eicar-Test-Signature", 1]]


def test_a_bad_time_falls_back_to_the_id_time_deterministically() -> None:
    event = received(1, time="yesterday")
    assert event_row(event) == event_row(event)  # a replay makes the same row
    row_time = event_row(event)[EVENT_COLUMNS.index("time")]
    assert int(row_time.timestamp() * 1000) == id_time_ms(event.id)


def test_out_of_range_integers_are_clamped_not_fatal(store: AnalyticsStore) -> None:
    # the extremes decode_event lets through (orjson reads integers up to 2**64 - 1)
    odd = Delivered(destination="lmtp", recipient="x@school.test", attempt=-3, reply=Reply(code=2**64 - 1))
    assert store.insert([odd]) == 1
    assert row_by_id(store, odd.id, "attempt, reply_code") == {"attempt": 0, "reply_code": 65535}


def test_an_event_type_without_a_mapping_gets_the_common_columns_only(
    store: AnalyticsStore, caplog: pytest.LogCaptureFixture
) -> None:
    event = NewerEvent(message_id="msg-7", time="2025-03-04T05:06:07.089Z", consumer="spam", recipients=["a@b.test"])
    with caplog.at_level(logging.WARNING, logger="consumers.sinks.analytics.rows"):
        row = dict(zip(EVENT_COLUMNS, event_row(event, Origin("poststelle.deadletter", 2, 41)), strict=True))
        event_row(NewerEvent(consumer="virus", recipients=[]))
    warnings = [r for r in caplog.records if "newer_than_the_mapping" in r.getMessage()]
    assert len(warnings) == 1  # once per type, not per event

    assert (row["id"], row["type"], row["message_id"]) == (event.id, "newer_than_the_mapping", "msg-7")
    assert row["time"].isoformat() == "2025-03-04T05:06:07.089000+00:00"
    assert (row["kafka_topic"], row["kafka_partition"], row["kafka_offset"]) == ("poststelle.deadletter", 2, 41)
    assert orjson.loads(row["payload"])["consumer"] == "spam"
    # nothing guessed from field names: "consumer" and "recipients" stay in the payload only
    assert (row["stage"], row["recipients"], row["sender"], row["size"]) == ("", [], "", 0)

    assert store.insert([event]) == 1  # and the store takes it like any other row
    columns = "type, message_id, stage, recipients, JSONExtractString(payload, 'consumer') AS c"
    stored = row_by_id(store, event.id, columns)
    assert stored == {
        "type": "newer_than_the_mapping", "message_id": "msg-7", "stage": "", "recipients": [], "c": "spam"
    }
