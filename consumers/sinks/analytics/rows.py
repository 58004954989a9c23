"""Events → rows of the `events` table: the common columns, plus what each event type adds.

Every event fills the common columns (``id``, ``type``, ``schema_version``, ``message_id``, ``time``,
``payload`` and where it was read from). A flattener per event type fills the columns it has a value
for; the others keep their defaults ("", 0, []). An event type without a flattener (a type newer than
this table, e.g. one added to `schemas.events` before a mapping here) gets the common columns only and
a warning once per type: its fields are still in ``payload``, and the sink must not stop over it.

A row is a pure function of the event and its origin, so a replayed event makes the same row; that is
what lets the store drop it by id.
"""
from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from consumers.sinks.analytics.schema import EVENT_COLUMNS
from schemas.events import (
    Bounced,
    Deadlettered,
    DeadletterReplayed,
    Deferred,
    Delivered,
    DeliveryAttempt,
    DigestSent,
    Discarded,
    Event,
    Held,
    QuarantineAction,
    Quarantined,
    Received,
    Rejected,
    Reply,
    Routed,
    SmtpCheck,
    SmtpConnect,
    SmtpReject,
    StageResult,
    UserSettingsChanged,
    encode_event,
)
from schemas.ids import id_time_ms

__all__ = ["Origin", "event_row", "event_time", "EPOCH"]

log = logging.getLogger(__name__)

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_MIN_TIME = dt.datetime(1900, 1, 1, tzinfo=dt.timezone.utc)  # DateTime64 range
_MAX_TIME = dt.datetime(2299, 12, 31, tzinfo=dt.timezone.utc)


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a row's event was read from (for a person tracing a row back to the log), and the bytes
    read when they are the event's current encoding (stored as its payload instead of encoding it again)."""

    topic: str = ""
    partition: int = -1
    offset: int = -1
    payload: bytes = b""


def _clamp(value: int, low: int, high: int) -> int:
    """Keep an integer inside its column's range, so a strange value can never fail a batch."""
    return max(low, min(high, value))


def _reply(reply: Reply) -> dict[str, Any]:
    return {
        "reply_code": _clamp(reply.code, 0, 65_535),
        "reply_enhanced": reply.enhanced,
        "reply_text": reply.text,
    }


def _from_message(message: Received) -> dict[str, Any]:
    """Columns every message event shares with the `received` event it carries."""
    return {
        "sender": message.envelope.mail_from,
        "recipients": list(message.envelope.rcpt_to),
        "client_ip": message.client.ip,
        "session_id": message.session_id,
        "size": _clamp(message.blob.size, 0, 2**63 - 1),
    }


def _received(e: Received) -> dict[str, Any]:
    return _from_message(e)


def _stage_result(e: StageResult) -> dict[str, Any]:
    return {
        **_from_message(e.message),
        "recipients": list(e.recipients),  # those the stage passed on (still in play)
        "stage": e.result.stage,
        "verdict": str(e.result.verdict),
        "score": e.result.score,
        "duration_ms": e.result.duration_ms,
    }


def _routed(e: Routed) -> dict[str, Any]:
    return {
        **_from_message(e.message),
        "destination": e.destination,
        "recipients": list(e.recipients),
        "attempt": _clamp(e.attempt, 0, 2**32 - 1),
    }


def _delivery(e: DeliveryAttempt | Delivered | Deferred | Bounced) -> dict[str, Any]:
    row = {
        "destination": e.destination,
        "recipient": e.recipient,
        "attempt": _clamp(e.attempt, 0, 2**32 - 1),
        **_reply(e.reply),
    }
    if isinstance(e, DeliveryAttempt):
        row["duration_ms"] = e.duration_ms
    if isinstance(e, Bounced):
        row.update(reason=e.reason, sender=e.mail_from)
    return row


def _discarded(e: Discarded) -> dict[str, Any]:
    return {"destination": e.destination, "recipient": e.recipient, "attempt": _clamp(e.attempt, 0, 2**32 - 1),
            "reason": e.by}


def _verdict(e: Rejected | Quarantined) -> dict[str, Any]:
    return {**_from_message(e.message), "stage": e.stage, "reason": e.reason, "recipients": list(e.recipients)}


def _held(e: Held) -> dict[str, Any]:
    reason = f"part {e.part} ({e.filename}): {'; '.join(e.reasons)}"
    return {**_from_message(e.message), "stage": e.stage, "reason": reason, "recipients": list(e.recipients)}


def _deadlettered(e: Deadlettered) -> dict[str, Any]:
    return {"stage": e.consumer, "reason": e.reason}


def _deadletter_replayed(e: DeadletterReplayed) -> dict[str, Any]:
    return {"reason": f"replayed {e.deadletter_id}"}


def _smtp_connect(e: SmtpConnect) -> dict[str, Any]:
    return {"session_id": e.session_id, "client_ip": e.client_ip}


def _smtp_decision(e: SmtpReject | SmtpCheck) -> dict[str, Any]:
    """The columns an ingress check's refusal and its other results share."""
    return {
        "session_id": e.session_id,
        "client_ip": e.client_ip,
        "phase": e.phase,
        "check_name": e.check,
        "sender": e.sender,
        "recipient": e.recipient,
    }


def _smtp_reject(e: SmtpReject) -> dict[str, Any]:
    return {**_smtp_decision(e), "reason_code": e.reason_code, **_reply(e.reply)}


def _smtp_check(e: SmtpCheck) -> dict[str, Any]:
    return {**_smtp_decision(e), "verdict": e.result}


def _user_settings(e: UserSettingsChanged) -> dict[str, Any]:
    """Whose settings changed (`recipient`) and which keys (`reason`); the values and `by` are in the payload."""
    return {"recipient": e.address, "reason": ",".join(e.changed)}


def _quarantine_action(e: QuarantineAction) -> dict[str, Any]:
    """Which entry (`reason`: the action and who), for whom; the rest is in the payload."""
    return {"recipient": e.recipient, "reason": f"{e.action} by {e.by}"}


def _digest_sent(e: DigestSent) -> dict[str, Any]:
    return {"recipient": e.user, "reason": f"digest of {len(e.entries)} entries"}


_FLATTEN: dict[type[Event], Callable[[Any], dict[str, Any]]] = {
    Received: _received,
    StageResult: _stage_result,
    Routed: _routed,
    DeliveryAttempt: _delivery,
    Delivered: _delivery,
    Deferred: _delivery,
    Bounced: _delivery,
    Discarded: _discarded,
    Quarantined: _verdict,
    Held: _held,
    Rejected: _verdict,
    Deadlettered: _deadlettered,
    DeadletterReplayed: _deadletter_replayed,
    SmtpConnect: _smtp_connect,
    SmtpReject: _smtp_reject,
    SmtpCheck: _smtp_check,
    UserSettingsChanged: _user_settings,
    QuarantineAction: _quarantine_action,
    DigestSent: _digest_sent,
}

_DEFAULTS: dict[str, Any] = {
    "stage": "",
    "verdict": "",
    "score": 0.0,
    "duration_ms": 0.0,
    "destination": "",
    "sender": "",
    "recipient": "",
    "recipients": [],
    "client_ip": "",
    "session_id": "",
    "size": 0,
    "attempt": 0,
    "reply_code": 0,
    "reply_enhanced": "",
    "reply_text": "",
    "reason": "",
    "check_name": "",
    "reason_code": "",
    "phase": "",
}


@functools.cache
def _warn_unmapped(event_type: str) -> None:
    """Once per type and process: the rows of `event_type` have only the common columns."""
    log.warning("no analytics columns for event type %r: storing its common columns and payload only", event_type)


def _type_columns(event: Event) -> dict[str, Any]:
    flatten = _FLATTEN.get(type(event))
    if flatten is None:
        _warn_unmapped(event.type)  # type: ignore[attr-defined]
        return {}
    return flatten(event)


def event_time(event: Event) -> dt.datetime:
    """The event's time as an aware UTC datetime in milliseconds, deterministic for a given event.

    An unparsable or out-of-range `time` falls back to the time in the (UUIDv7) id, then to the
    epoch, never to "now": a replayed event must produce the same row.
    """
    try:
        parsed = dt.datetime.fromisoformat(event.time)
        parsed = parsed.astimezone(dt.timezone.utc) if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)
    except (ValueError, OverflowError):
        try:
            parsed = EPOCH + dt.timedelta(milliseconds=id_time_ms(event.id))
        except (ValueError, OverflowError):
            parsed = EPOCH
    if not _MIN_TIME <= parsed <= _MAX_TIME:
        parsed = EPOCH
    return parsed.replace(microsecond=parsed.microsecond // 1000 * 1000)


def event_row(event: Event, origin: Origin | None = None) -> list[Any]:
    """The `events` row of one event, in `EVENT_COLUMNS` order."""
    origin = origin or Origin()
    values = {
        **_DEFAULTS,
        **_type_columns(event),
        "id": event.id,
        "type": event.type,  # type: ignore[attr-defined]
        "schema_version": _clamp(event.schema_version, 0, 65_535),
        "message_id": event.message_id,
        "time": event_time(event),
        "payload": (origin.payload or encode_event(event)).decode(),
        "kafka_topic": origin.topic,
        "kafka_partition": _clamp(origin.partition, -1, 2**31 - 1),
        "kafka_offset": origin.offset,
    }
    return [values[name] for name in EVENT_COLUMNS]
