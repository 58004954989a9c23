"""The parts events are made of: envelope, client, blob reference, replies, stage results, edits.

Frozen dataclasses, encoded inside the events of `schemas.events`; they carry no version of their
own (a part changes only by gaining fields with defaults, which older readers ignore).
"""
from __future__ import annotations

import datetime as dt
import enum
import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "Verdict",
    "Envelope",
    "Client",
    "BlobRef",
    "HeaderSummary",
    "Reply",
    "Result",
    "Edit",
    "Replacement",
    "now_iso",
    "iso_from_epoch",
    "epoch_from_iso",
]


_second_prefix: tuple[int, str] = (0, "1970-01-01T00:00:00")  # the last whole second formatted


def iso_from_epoch(seconds: float) -> str:
    """ISO 8601 UTC with milliseconds, as every event `time` is written.

    The same text as `datetime.fromtimestamp(seconds, utc).isoformat(timespec="milliseconds")` with
    `Z` for `+00:00` (microseconds rounded half to even, then cut to milliseconds), at a fraction of
    its cost: every event is stamped with it, and most events of a second share its prefix.
    """
    global _second_prefix
    whole = math.floor(seconds)
    micros = round((seconds - whole) * 1_000_000)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    second, prefix = _second_prefix
    if second != whole:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second_prefix = (whole, prefix)
    return f"{prefix}.{micros // 1000:03d}Z"


def now_iso() -> str:
    return iso_from_epoch(time.time())


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
    # where the blob is when not in a file of its own: a segment file of the blob store and the
    # offset of its bytes in it (`pipeline.blobsegments`); "" and 0: the file <sha256>
    segment: str = ""
    offset: int = 0


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
    kind: Literal["add_header", "subject_tag", "remove_header", "replace_part", "envelope_sender"]
    name: str = ""  # header name for add_header and remove_header
    # header value, or the tag text; remove_header: only fields whose first word is this;
    # replace_part: the notice text put in the part's place; envelope_sender: the MAIL FROM address
    value: str = ""
    part: str = ""  # replace_part: the MIME part number (IMAP style, e.g. "2" or "1.3")
    sha256: str = ""  # replace_part: sha256 of the part's raw (still encoded) body bytes
    # the recipients the edit is for; [] means every recipient (of the message, or of the copy it is in)
    recipients: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class Replacement:
    """A stage replaced one recipient by others: a group expanded into its members, an alias resolved.

    Kept in the events that follow, so the history shows the address the sender used and what it became.
    """

    stage: str = ""  # filled in by the runner
    recipient: str
    into: list[str]
    reason: str = ""
