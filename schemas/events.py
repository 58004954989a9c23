"""The events of poststelle, version 1.

Every event carries `type`, `schema_version`, a time-ordered `id` (UUIDv7), the `message_id` of the
message it belongs to ("" for SMTP session events that precede a message) and its creation `time`
(ISO 8601, UTC, milliseconds). Events are frozen dataclasses encoded with orjson; `decode_event`
turns bytes back into the right class, checking every field.

Raw messages never travel in events: a `received` event carries a `BlobRef` (sha256 and size) into
the blob store, an envelope and a header summary, so topics stay small.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from schemas.codec import DecodeError, from_dict, to_json
from schemas.ids import new_id

__all__ = [
    "SCHEMA_VERSION",
    "Verdict",
    "Event",
    "Envelope",
    "Client",
    "BlobRef",
    "HeaderSummary",
    "Reply",
    "Result",
    "Edit",
    "Received",
    "StageResult",
    "Routed",
    "DeliveryAttempt",
    "Delivered",
    "Deferred",
    "Bounced",
    "Quarantined",
    "Held",
    "Rejected",
    "Deadlettered",
    "MessageOutcome",
    "AcceptedEarly",
    "SmtpConnect",
    "SmtpReject",
    "SmtpCheck",
    "EVENT_TYPES",
    "event_type_name",
    "encode_event",
    "decode_event",
    "now_iso",
    "iso_from_epoch",
    "epoch_from_iso",
    "DecodeError",
]

SCHEMA_VERSION = 1


def iso_from_epoch(seconds: float) -> str:
    """ISO 8601 UTC with milliseconds, as every event `time` is written."""
    moment = dt.datetime.fromtimestamp(seconds, dt.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_iso() -> str:
    return iso_from_epoch(dt.datetime.now(dt.timezone.utc).timestamp())


def epoch_from_iso(text: str) -> float:
    """Seconds since the epoch of an ISO 8601 time (as written by `iso_from_epoch`)."""
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Verdict(enum.StrEnum):
    """One stage's result for one message (Haraka's per-plugin result)."""

    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"
    ERROR = "error"
    TEMPFAIL = "tempfail"


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    message_id: str = ""
    id: str = field(default_factory=new_id)
    time: str = field(default_factory=now_iso)
    schema_version: int = SCHEMA_VERSION


# ---- parts ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    mail_from: str  # "" is the null sender <>
    rcpt_to: list[str]
    smtputf8: bool = False
    body: Literal["7BIT", "8BITMIME", "BINARYMIME"] = "7BIT"


@dataclass(frozen=True, slots=True, kw_only=True)
class Client:
    ip: str
    port: int
    helo: str = ""
    reverse_name: str = ""  # the PTR name, when looked up
    authenticated_as: str = ""  # SASL user of a submission session
    tls: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class BlobRef:
    sha256: str
    size: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HeaderSummary:
    subject: str = ""
    header_from: str = ""
    header_to: str = ""
    message_id_header: str = ""
    date: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """An SMTP/LMTP reply as received or sent."""

    code: int
    enhanced: str = ""
    text: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    stage: str
    verdict: Verdict
    score: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    duration_ms: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Edit:
    """A change a stage asks the delivery sink to apply when rendering; the blob is never changed."""

    stage: str
    kind: Literal["add_header", "subject_tag", "remove_header", "replace_part"]
    name: str = ""  # header name for add_header and remove_header
    # header value, or the tag text; remove_header: only fields whose first word is this;
    # replace_part: the notice text put in the part's place
    value: str = ""
    part: str = ""  # replace_part: the MIME part number (IMAP style, e.g. "2" or "1.3")
    sha256: str = ""  # replace_part: sha256 of the part's raw (still encoded) body bytes


# ---- message events ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Received(Event):
    """The ingress accepted a message: it is durable in the blob store and on this topic."""

    type: Literal["received"] = "received"
    envelope: Envelope
    client: Client
    blob: BlobRef
    headers: HeaderSummary = field(default_factory=HeaderSummary)
    session_id: str = ""
    listener: str = "smtp"
    ingress_host: str = ""
    # SMTP-time checks that let the message through after a temporary failure (e.g. ["dnsbl"] after a
    # DNS timeout with on_error = "skip"); the blocklist stage looks again
    skipped_checks: list[str] = field(default_factory=list)
    # by when the ingress answers the client (ISO time); "" when it does not wait for the pipeline's
    # verdict. A rejection the client was not told of becomes quarantine (see consumers/sinks/verdict.py)
    answer_by: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class StageResult(Event):
    """A stage passed the message on: its own result plus everything earlier stages recorded."""

    type: Literal["stage_result"] = "stage_result"
    result: Result
    message: Received
    history: list[Result] = field(default_factory=list)  # results of earlier stages, in order
    edits: list[Edit] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class Routed(Event):
    """The pipeline decided where some recipients' copy goes."""

    type: Literal["routed"] = "routed"
    destination: str  # sink name: "lmtp", "smarthost"
    recipients: list[str]
    message: Received
    results: list[Result] = field(default_factory=list)
    edits: list[Edit] = field(default_factory=list)
    attempt: int = 0  # deliveries already tried (retries carry the count forward)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryAttempt(Event):
    type: Literal["delivery_attempt"] = "delivery_attempt"
    destination: str
    recipient: str
    attempt: int
    reply: Reply
    duration_ms: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivered(Event):
    type: Literal["delivered"] = "delivered"
    destination: str
    recipient: str
    attempt: int
    reply: Reply
    received_time: str = ""  # when the ingress accepted the message, for delay figures


@dataclass(frozen=True, slots=True, kw_only=True)
class Deferred(Event):
    """A temporary failure (4xx): the delivery is retried later (see the retry schedule)."""

    type: Literal["deferred"] = "deferred"
    destination: str
    recipient: str
    attempt: int
    reply: Reply
    next_attempt_time: str = ""
    routed: Routed | None = None  # what to deliver again


@dataclass(frozen=True, slots=True, kw_only=True)
class Bounced(Event):
    """A permanent failure (5xx) or expiry: the recipient does not get the message."""

    type: Literal["bounced"] = "bounced"
    destination: str
    recipient: str
    attempt: int
    reply: Reply
    reason: Literal["permanent", "expired"] = "permanent"
    mail_from: str = ""
    routed: Routed | None = None  # the message and its stage results, for the DSN


@dataclass(frozen=True, slots=True, kw_only=True)
class Quarantined(Event):
    type: Literal["quarantined"] = "quarantined"
    stage: str
    reason: str
    recipients: list[str]
    message: Received
    results: list[Result] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class Held(Event):
    """A stage held one part of a message back (it stays in the stored blob); the rest goes on.

    Written to the quarantine topic. The delivered copy carries a notice in the part's place (a
    `replace_part` edit); `poststelle quarantine get MESSAGE_ID PART` extracts the held part.
    """

    type: Literal["held"] = "held"
    stage: str
    part: str  # MIME part number
    sha256: str  # of the part's raw body bytes, as in the replace_part edit
    filename: str  # as the client would show it (decoded)
    content_type: str
    reasons: list[str]
    recipients: list[str]
    message: Received


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejected(Event):
    type: Literal["rejected"] = "rejected"
    stage: str
    reason: str
    recipients: list[str]
    message: Received
    results: list[Result] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class Deadlettered(Event):
    """A record a consumer could not handle (undecodable, too deep, or the stage crashed on it)."""

    type: Literal["deadlettered"] = "deadlettered"
    consumer: str  # stage or sink name
    source_topic: str
    partition: int
    offset: int
    reason: str  # undecodable | too_deep | too_large | looping | exception
    error: str
    payload: str = ""  # the record as text (truncated), for a person to inspect


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageOutcome(Event):
    """The pipeline's terminal outcome for some recipients of a message, for the ingress waiting on it.

    Small on purpose (no message inside): the ingress reads every one of them.
    """

    type: Literal["outcome"] = "outcome"
    stage: str
    disposition: Literal["rejected", "quarantined", "routed"]
    recipients: list[str]
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class AcceptedEarly(Event):
    """The ingress answered 250 before the pipeline's verdict was known (the wait ran out).

    A later rejection of this message is then turned into quarantine: the sender was told it is
    accepted, so it must not vanish, and no bounce goes to a possibly forged sender.
    """

    type: Literal["accepted_early"] = "accepted_early"
    waited_ms: float = 0.0


# ---- SMTP session events (analytics) ---------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SmtpConnect(Event):
    type: Literal["smtp_connect"] = "smtp_connect"
    session_id: str
    client_ip: str
    client_port: int
    listener: str = "smtp"


@dataclass(frozen=True, slots=True, kw_only=True)
class SmtpReject(Event):
    """The ingress refused a command: which check, why, with which reply."""

    type: Literal["smtp_reject"] = "smtp_reject"
    session_id: str
    client_ip: str
    phase: Literal["connect", "helo", "mail", "rcpt", "data", "auth", "command"]
    check: str  # e.g. "relay", "dnsbl", "smuggling", "size", "persist"
    reason_code: str  # stable machine-readable reason, e.g. "relay_denied"
    reply: Reply
    helo: str = ""
    sender: str = ""
    recipient: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class SmtpCheck(Event):
    """A check's result that is not a refusal but worth counting (a greylisting pass after retry,
    an FCrDNS failure that only scores, a check skipped for an allow-listed client)."""

    type: Literal["smtp_check"] = "smtp_check"
    session_id: str
    client_ip: str
    phase: Literal["connect", "helo", "mail", "rcpt", "data", "auth"]
    check: str
    result: str  # stable, e.g. "passed_after_retry", "whitelisted", "fail"
    sender: str = ""
    recipient: str = ""


def event_type_name(cls: type[Event]) -> str:
    """The `type` value of an event class (slots hide class-level defaults)."""
    return next(f.default for f in dataclasses.fields(cls) if f.name == "type")  # type: ignore[return-value]


EVENT_TYPES: dict[str, type[Event]] = {
    event_type_name(cls): cls
    for cls in (
        Received,
        StageResult,
        Routed,
        DeliveryAttempt,
        Delivered,
        Deferred,
        Bounced,
        Quarantined,
        Held,
        Rejected,
        Deadlettered,
        MessageOutcome,
        AcceptedEarly,
        SmtpConnect,
        SmtpReject,
        SmtpCheck,
    )
}


def encode_event(event: Event) -> bytes:
    return to_json(event)


def decode_event(payload: bytes | str, expect: tuple[type[Event], ...] | None = None) -> Event:
    """Decode one event, refusing unknown types, newer major versions and ill-typed fields."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise DecodeError("an event is a JSON object")
    cls = EVENT_TYPES.get(data.get("type"))  # type: ignore[arg-type]
    if cls is None:
        raise DecodeError(f"unknown event type {data.get('type')!r}")
    version = data.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise DecodeError(f"unsupported schema_version {version!r}")
    if expect is not None and cls not in expect:
        raise DecodeError(f"unexpected event type {data['type']!r}")
    return from_dict(cls, data)
