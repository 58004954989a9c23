"""The events of poststelle.

Every event carries `type`, `schema_version`, a time-ordered `id` (UUIDv7), the `message_id` of the
message it belongs to ("" for SMTP session events that precede a message) and its creation `time`
(ISO 8601, UTC, milliseconds). Events are frozen dataclasses encoded with orjson; `decode_event`
turns bytes back into the right class, checking every field.

Raw messages never travel in events: a `received` event carries a `BlobRef` (sha256 and size) into
the blob store, an envelope and a header summary, so topics stay small.

**Versions.** Each event type has its own `schema_version`, raised when the meaning of the type
changes (a field added with a default that old readers may ignore is no change of meaning).
`decode_event` refuses a version newer than it knows and upgrades older ones step by step
(`UPGRADES`), so events written by an earlier release replay: a consumer always sees the current
shape. The changes so far:

- `stage_result` v2: `recipients` (who is still in play; v1 meant every envelope recipient) and
  `replacements` (recipients a stage replaced by others). Edits may name their `recipients`.
- `outcome` v2: the disposition `replaced` (`recipients` → `into`), so a waiting ingress follows a
  recipient that became several.
- `deadlettered` v2: the whole record (`payload`, text or base64, or `payload_blob` when too large
  for an event) and its `key`; v1 kept only the first 4 KiB as text.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cache
from typing import Literal

import msgspec
import orjson

from schemas.base import Event
from schemas.codec import DecodeError, from_dict, json_decoder, to_json
from schemas.deadletter import Deadlettered, DeadletterReplayed
from schemas.parts import (
    BlobRef,
    Client,
    Edit,
    Envelope,
    HeaderSummary,
    Replacement,
    Reply,
    Result,
    Verdict,
    epoch_from_iso,
    iso_from_epoch,
    now_iso,
)
from schemas.quarantine import DigestSent, QuarantineAction
from schemas.session import SmtpCheck, SmtpConnect, SmtpReject
from schemas.training import SpamLearned
from schemas.upgrades import UPGRADES
from schemas.users import UserPrefValues, UserSettingsChanged

__all__ = [
    "Verdict",
    "Event",
    "Envelope",
    "Client",
    "BlobRef",
    "HeaderSummary",
    "Reply",
    "Result",
    "Edit",
    "Replacement",
    "Received",
    "StageResult",
    "Routed",
    "DeliveryAttempt",
    "Delivered",
    "Deferred",
    "Bounced",
    "Discarded",
    "Quarantined",
    "Held",
    "Rejected",
    "Deadlettered",
    "DeadletterReplayed",
    "MessageOutcome",
    "AcceptedEarly",
    "UserPrefValues",
    "UserSettingsChanged",
    "SmtpConnect",
    "SmtpReject",
    "SmtpCheck",
    "SpamLearned",
    "QuarantineAction",
    "DigestSent",
    "EVENT_TYPES",
    "UPGRADES",
    "event_type_name",
    "version_of",
    "encode_event",
    "decode_event",
    "decode_event_as_read",
    "now_iso",
    "iso_from_epoch",
    "epoch_from_iso",
    "DecodeError",
]


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
    # what the SMTP-time checks noted without refusing, per check: {"fcrdns": "fail", "dnsbl": "score=2",
    # "greylist": "passed_after_retry", "relay": "authenticated"}; the spam stage weighs them
    checks: dict[str, str] = field(default_factory=dict)
    # by when the ingress answers the client (ISO time); "" when it does not wait for the pipeline's
    # verdict. A rejection the client was not told of becomes quarantine (see consumers/sinks/verdict.py)
    answer_by: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class StageResult(Event):
    """A stage passed the message on: its own result plus everything earlier stages recorded.

    `recipients` are those still in play: the envelope's, less those an earlier stage rejected,
    quarantined or routed, with `replacements` applied. `history` holds the earlier stages' results
    for the stage that reads the record; a record a chain of stages marked (Kafka header
    `poststelle-chained-to`: the chain ran the next stage itself, and no stage reads it) leaves it empty.
    """

    type: Literal["stage_result"] = "stage_result"
    schema_version: int = 2
    result: Result
    message: Received
    recipients: list[str]
    # results of earlier stages, in order, for the stage that reads this record; empty on a record a
    # chain marked `poststelle-chained-to` (no stage reads it; see docs/decisions/0008-history-where-read.md)
    history: list[Result] = field(default_factory=list)
    edits: list[Edit] = field(default_factory=list)  # every edit so far; each names its recipients ([] all)
    replacements: list[Replacement] = field(default_factory=list)  # every replacement so far, in order


@dataclass(frozen=True, slots=True, kw_only=True)
class Routed(Event):
    """The pipeline decided where some recipients' copy goes.

    Every edit of a copy applies to every recipient of the copy: recipients whose edits differ get
    copies of their own.
    """

    type: Literal["routed"] = "routed"
    destination: str  # sink name: "lmtp", "smarthost"
    recipients: list[str]
    message: Received
    results: list[Result] = field(default_factory=list)
    edits: list[Edit] = field(default_factory=list)
    attempt: int = 0  # deliveries already tried (retries carry the count forward)
    replacements: list[Replacement] = field(default_factory=list)  # how the envelope became these recipients


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
    delay_notice: bool = False  # this attempt passed `delivery.delay_warning`: the sender is told (bounce service)


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
class Discarded(Event):
    """An operator took a deferred delivery out of the queue (`poststelle queue delete`, Postfix's
    `postsuper -d`): it is not tried again, and its sender gets no DSN."""

    type: Literal["discarded"] = "discarded"
    destination: str
    recipient: str
    attempt: int  # the attempts made before
    by: str = ""  # who took it out, and why: `queue delete --by` ("helpdesk: ticket 4711")


@dataclass(frozen=True, slots=True, kw_only=True)
class Quarantined(Event):
    """A stage held the message for these recipients, for a person to look at."""

    type: Literal["quarantined"] = "quarantined"
    stage: str
    reason: str
    recipients: list[str]
    message: Received
    results: list[Result] = field(default_factory=list)
    replacements: list[Replacement] = field(default_factory=list)
    edits: list[Edit] = field(default_factory=list)  # the edits so far: a released copy carries its headers


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
    results: list[Result] = field(default_factory=list)  # the stages so far (a released copy goes on from here)


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejected(Event):
    """A stage refused the message for these recipients (554 at DATA, or quarantine when too late)."""

    type: Literal["rejected"] = "rejected"
    stage: str
    reason: str
    recipients: list[str]
    message: Received
    results: list[Result] = field(default_factory=list)
    replacements: list[Replacement] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageOutcome(Event):
    """The pipeline's terminal outcome for some recipients of a message, for the ingress waiting on it.

    Small on purpose (no message inside): the ingress reads every one of them.
    """

    type: Literal["outcome"] = "outcome"
    schema_version: int = 2
    stage: str
    # replaced: `recipients` (one address) became `into`; the others end the way of `recipients`
    disposition: Literal["rejected", "quarantined", "routed", "replaced"]
    recipients: list[str]
    reason: str = ""
    into: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class AcceptedEarly(Event):
    """The ingress answered 250 without telling the sender of every rejection: the wait ran out
    before the pipeline's verdict (`reason` "timeout"), or some recipients were rejected and others
    not ("partial"), and a DATA reply is one answer for the whole transaction.

    A rejection of this message is then turned into quarantine: the sender was told it is
    accepted, so it must not vanish, and no bounce goes to a possibly forged sender.
    """

    type: Literal["accepted_early"] = "accepted_early"
    waited_ms: float = 0.0
    reason: Literal["timeout", "partial"] = "timeout"


def event_type_name(cls: type[Event]) -> str:
    """The `type` value of an event class (slots hide class-level defaults)."""
    return next(f.default for f in dataclasses.fields(cls) if f.name == "type")  # type: ignore[return-value]


@cache
def version_of(cls: type[Event]) -> int:
    """The current `schema_version` of an event class."""
    return next(f.default for f in dataclasses.fields(cls) if f.name == "schema_version")  # type: ignore[return-value]


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
        Discarded,
        Quarantined,
        Held,
        Rejected,
        Deadlettered,
        DeadletterReplayed,
        MessageOutcome,
        AcceptedEarly,
        UserSettingsChanged,
        SmtpConnect,
        SmtpReject,
        SmtpCheck,
        SpamLearned,
        QuarantineAction,
        DigestSent,
    )
}


def encode_event(event: Event) -> bytes:
    return to_json(event)


class _Head(msgspec.Struct):
    """What says how to decode the rest: read first, the other fields skipped."""

    type: str = ""
    schema_version: int = 0


_HEAD = msgspec.json.Decoder(_Head)


def decode_event(payload: bytes | str, expect: tuple[type[Event], ...] | None = None) -> Event:
    """Decode one event, refusing unknown types, newer versions and ill-typed fields; older
    versions come back upgraded to the current one."""
    return decode_event_as_read(payload, expect)[0]


def decode_event_as_read(payload: bytes | str,
                         expect: tuple[type[Event], ...] | None = None) -> tuple[Event, bool]:
    """`decode_event`, and whether `payload` is the event's current encoding (a valid event of its
    type's current version: what encoding the event would give, up to field order and fields a newer
    writer added) rather than an older version that was upgraded."""
    event = _decode_current(payload, expect)
    return (event, True) if event is not None else (_decode_checked(payload, expect), False)


def _decode_checked(payload: bytes | str, expect: tuple[type[Event], ...] | None) -> Event:
    """The long way: JSON to dicts, upgraded step by step, then checked field by field (the reason
    of a refusal names the field)."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise DecodeError("an event is a JSON object")
    name = data.get("type")
    cls = EVENT_TYPES.get(name) if isinstance(name, str) else None  # a list or object is unhashable
    if cls is None:
        raise DecodeError(f"unknown event type {name!r}")
    version = data.get("schema_version")
    current = version_of(cls)
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= current:
        raise DecodeError(f"unsupported schema_version {version!r} of {name!r} (current: {current})")
    if expect is not None and cls not in expect:
        raise DecodeError(f"unexpected event type {name!r}")
    while version < current:
        data = {**UPGRADES[(name, version)](data), "schema_version": version + 1}  # type: ignore[index]
        version += 1
    return from_dict(cls, data)


def _decode_current(payload: bytes | str, expect: tuple[type[Event], ...] | None) -> Event | None:
    """The common case in one pass (`schemas.codec.json_decoder`): a valid event of the current
    version and an expected type. None for anything else, which `decode_event` then decodes the
    long way: it upgrades an older version, and says what is wrong with a bad one."""
    try:
        head = _HEAD.decode(payload)
    except (msgspec.DecodeError, RecursionError):
        return None
    cls = EVENT_TYPES.get(head.type)
    if cls is None or (expect is not None and cls not in expect) or head.schema_version != version_of(cls):
        return None
    decode = json_decoder(cls)
    return decode(payload) if decode is not None else None
