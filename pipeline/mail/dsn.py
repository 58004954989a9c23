"""Delivery status notifications (RFC 3464): whether one may be sent, and the DSN message itself.

A DSN reports a `bounced` event (Action: failed: the recipient does not get the message) or a
`deferred` event that passed `delivery.delay_warning` (Action: delayed: still being tried, with
Will-Retry-Until; Postfix's "Delayed Mail"). `dsn_refusal` says why no DSN may be sent (never to
the null sender, never for a spam or virus verdict, never for a bounce); `build_dsn` makes the DSN.
The bounce service (`consumers.services.bounce`) stores it and injects it into the pipeline.

A DSN's message id (and its event id and its bytes) derive from the reported event's id, so if a
delivery sink re-emits the same event after a crash, the second DSN has the same message id and
the delivery ledger refuses to deliver it twice.

The DSN is ``multipart/report; report-type=delivery-status`` with three parts: a human explanation
(text/plain), the machine-readable ``message/delivery-status``, and the original message's header
block (``text/rfc822-headers``, RFC 6522; left out when the original is no longer available). The
body of the original is never returned.
"""
from __future__ import annotations

import binascii
import datetime as dt
import email.utils
import re
import textwrap
import uuid
from email.parser import BytesHeaderParser
from email.policy import compat32

from pipeline.mail.render import envelope_sender_of
from schemas.events import Bounced, Deferred, Verdict
from schemas.ids import derived_id

__all__ = [
    "Reported",
    "build_dsn",
    "dsn_refusal",
    "dsn_message_id",
    "dsn_event_id",
    "dsn_status",
    "envelope_sender",
    "header_block",
]

SUBJECT = "Undelivered Mail Returned to Sender"
DELAYED_SUBJECT = "Delayed Mail (still being retried)"
FROM_NAME = "Mail Delivery System"
EXPIRED_STATUS = "4.4.7"  # RFC 3463: delivery time expired
VERDICT_STAGES = ("spam", "virus")  # a fail verdict of these never earns a DSN (backscatter)
MAX_HEADER_BYTES = 65_536  # of the original's header block returned in the third part

_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_CRLF = "\r\n"

Reported = Bounced | Deferred  # what a DSN reports: a failure, or a delay (a deferral with `delay_notice`)


# ---- identifiers ----------------------------------------------------------------------------------


def dsn_message_id(bounced: Reported) -> str:
    """The message id of the DSN for `bounced`: the same for the same event, different otherwise."""
    return derived_id(bounced.id, "dsn")


def dsn_event_id(bounced: Reported) -> str:
    """The id of the DSN's `received` event, so analytics counts a re-emitted DSN once."""
    return derived_id(bounced.id, "dsn-event")


# ---- refusal ---------------------------------------------------------------------------------------


def envelope_sender(bounced: Reported) -> str:
    """Where the DSN goes: the copy's envelope sender (`envelope_sender_of`: the message's, or the
    group owner an `envelope_sender` edit names) when the event carries the copy."""
    if bounced.routed is not None:
        return envelope_sender_of(bounced.routed)
    return bounced.mail_from if isinstance(bounced, Bounced) else ""


def _is_null(sender: str) -> bool:
    return sender.strip() in ("", "<>")


def _is_delivery_report(original: bytes) -> bool:
    """Whether the original message is itself a DSN (multipart/report of delivery status)."""
    if not original:
        return False
    headers = BytesHeaderParser(policy=compat32).parsebytes(header_block(original))
    if headers.get_content_type() != "multipart/report":
        return False
    report_type = str(headers.get_param("report-type", "") or "").strip().lower()
    return report_type in ("delivery-status", "global-delivery-status")


def dsn_refusal(bounced: Reported, original: bytes) -> str | None:
    """Why no DSN may be sent for `bounced`, or None when one may.

    `original` is the raw original message (b"" when it is not available: that check is skipped).
    """
    if _is_null(envelope_sender(bounced)) or (isinstance(bounced, Bounced) and _is_null(bounced.mail_from)):
        return "null sender"
    if bounced.routed is None:
        return "no message data"
    if any(r.stage in VERDICT_STAGES and r.verdict == Verdict.FAIL for r in bounced.routed.results):
        return "spam/virus verdict"
    if _is_delivery_report(original):
        return "bounce of a bounce"
    return None


# ---- field values ----------------------------------------------------------------------------------


def dsn_status(bounced: Reported) -> str:
    """The RFC 3463 status code of the failure or delay.

    Expiry is 4.4.7; otherwise the reply's enhanced code when it is well formed and of the reply's
    class, else the class of the reply code with ".0.0" (5.0.0 for a 5xx; a reply of neither class:
    5.0.0 for a failure, 4.0.0 for a delay).
    """
    if isinstance(bounced, Bounced) and bounced.reason == "expired":
        return EXPIRED_STATUS
    reply = bounced.reply
    klass = str(reply.code)[0] if 400 <= reply.code < 600 else ("4" if isinstance(bounced, Deferred) else "5")
    if _STATUS.fullmatch(reply.enhanced) and reply.enhanced[0] == klass:
        return reply.enhanced
    return f"{klass}.0.0"


def _one_line(text: str) -> str:
    """Control characters (CR, LF, tabs) become spaces, runs of spaces one."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def _ascii(text: str) -> str:
    return _one_line(text).encode("ascii", "replace").decode("ascii")


def _address_field(address: str) -> str:
    """An address-type and address for Final-Recipient (RFC 3464; RFC 6533 for UTF-8 addresses)."""
    address = _one_line(address)
    if address.isascii():
        return f"rfc822; {address}"
    escaped = "".join(c if c.isascii() and c != "\\" else f"\\x{{{ord(c):X}}}" for c in address)
    return f"utf-8; {escaped}"


def _reply_line(bounced: Reported) -> str:
    reply = bounced.reply
    return _one_line(" ".join(p for p in (str(reply.code), reply.enhanced, reply.text) if p))


def _parse_time(iso: str) -> dt.datetime | None:
    try:
        value = dt.datetime.fromisoformat(iso)
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def _date(iso: str) -> str:
    """An RFC 5322 date for an event time (ISO 8601); now when the time does not parse."""
    value = _parse_time(iso) or dt.datetime.now(dt.timezone.utc)
    return email.utils.format_datetime(value.astimezone(dt.timezone.utc))


def _duration(seconds: float) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return "less than a minute"


def _fold(name: str, value: str) -> str:
    """One header field, folded at spaces to about 78 columns, ending in CRLF."""
    lines: list[str] = []
    line, empty = f"{name}:", True
    for word in value.split():
        if not empty and len(line) + 1 + len(word) > 78:
            lines.append(line)
            line = " " + word
        else:
            line += " " + word
        empty = False
    lines.append(line)
    return _CRLF.join(lines) + _CRLF


# ---- parts -----------------------------------------------------------------------------------------


def _age(bounced: Reported) -> str:
    """How long delivery has been tried (" for 4 hours"), or "" when the times are not known."""
    received = _parse_time(bounced.routed.message.time) if bounced.routed else None
    now = _parse_time(bounced.time)
    return f" for {_duration((now - received).total_seconds())}" if received and now else ""


def _human_text(bounced: Reported, reporting_mta: str, with_headers: bool, retry_until: str) -> str:
    """The explanation for a person: which recipient, what the server said, permanent, expired or delayed."""
    if isinstance(bounced, Deferred):
        until = f" until {_date(retry_until)}" if retry_until else ""
        opening = "Your message has not yet been delivered to the following recipient:"
        why = (f"Delivery has been tried{_age(bounced)}. It will be tried again{until}; you do not need to "
               "send it again, and you will be told if it cannot be delivered in the end. The last "
               "attempt was answered:")
    elif bounced.reason == "expired":
        opening = "Your message could not be delivered to the following recipient:"
        why = (f"Delivery was tried{_age(bounced)} without success, and the message has now expired "
               "(delivery time expired). It will not be tried again. The last attempt was answered:")
    else:
        opening = "Your message could not be delivered to the following recipient:"
        why = ("The receiving mail server refused it permanently, so it will not be tried again. "
               "It answered:")
    paragraphs = [
        f"This is the mail delivery system at {reporting_mta}.",
        opening,
        f"    <{_one_line(bounced.recipient)}>",
        why,
        f"    {_reply_line(bounced) or '(no reply)'}",
    ]
    if with_headers:
        paragraphs.append("The headers of your message are attached below.")
    wrapped = (p if p.startswith("    ") else textwrap.fill(p, width=72) for p in paragraphs)
    return "\n\n".join(wrapped) + "\n"


def _text_part(text: str, content_type: str = "text/plain") -> bytes:
    """A part with `text` as 7-bit US-ASCII, or as quoted-printable UTF-8 when it is not ASCII."""
    return _encoded_part(text.encode("utf-8"), content_type, "utf-8")


def _encoded_part(data: bytes, content_type: str, charset: str) -> bytes:
    """A part for `data` (LF or CRLF lines): plain 7-bit when it can be, quoted-printable if not."""
    lines = data.replace(b"\r\n", b"\n").split(b"\n")
    if data.isascii() and all(len(line) <= 998 for line in lines):
        head = f"Content-Type: {content_type}; charset=us-ascii{_CRLF}Content-Transfer-Encoding: 7bit"
        body = b"\r\n".join(lines)
    else:
        head = f"Content-Type: {content_type}; charset={charset}{_CRLF}Content-Transfer-Encoding: quoted-printable"
        body = binascii.b2a_qp(b"\n".join(lines), istext=True).replace(b"\n", b"\r\n")
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    return head.encode("ascii") + b"\r\n\r\n" + body


def _delivery_status(bounced: Reported, reporting_mta: str, remote_mta: str, retry_until: str) -> bytes:
    """The message/delivery-status part: per-message fields, a blank line, per-recipient fields."""
    per_message = _fold("Reporting-MTA", f"dns; {_ascii(reporting_mta)}")
    per_message += _fold("X-Poststelle-Message-Id", _ascii(bounced.message_id))
    if bounced.routed is not None:
        per_message += _fold("Arrival-Date", _date(bounced.routed.message.time))
    per_recipient = _fold("Final-Recipient", _address_field(bounced.recipient))
    per_recipient += _fold("Action", "delayed" if isinstance(bounced, Deferred) else "failed")
    per_recipient += _fold("Status", dsn_status(bounced))
    if remote_mta:
        per_recipient += _fold("Remote-MTA", f"dns; {_ascii(remote_mta)}")
    reply = _ascii(_reply_line(bounced))
    if reply:
        per_recipient += _fold("Diagnostic-Code", f"smtp; {reply}")
    per_recipient += _fold("Last-Attempt-Date", _date(bounced.time))
    if isinstance(bounced, Deferred) and retry_until:
        per_recipient += _fold("Will-Retry-Until", _date(retry_until))
    body = per_message + _CRLF + per_recipient
    return f"Content-Type: message/delivery-status{_CRLF}{_CRLF}{body}".encode("ascii")


def header_block(original: bytes, limit: int = MAX_HEADER_BYTES) -> bytes:
    """The original's header section (up to the first empty line), CRLF lines, at most `limit` bytes."""
    lines: list[bytes] = []
    size = 0
    for line in original.replace(b"\r\n", b"\n").split(b"\n"):
        if not line.strip(b" \t\r"):
            break
        size += len(line) + 2
        if size > limit:
            break
        lines.append(line.rstrip(b"\r"))
    return b"".join(line + b"\r\n" for line in lines)


def _headers_part(headers: bytes) -> bytes:
    try:
        headers.decode("utf-8")
        charset = "utf-8"
    except UnicodeDecodeError:
        charset = "unknown-8bit"  # RFC 1428
    return _encoded_part(headers, "text/rfc822-headers", charset)


def _boundary(dsn_id: str, parts: list[bytes]) -> str:
    """A boundary made from the DSN id, lengthened until no part contains it."""
    boundary = f"=_poststelle-dsn-{uuid.UUID(dsn_id).hex}"
    while any(boundary.encode() in part for part in parts):
        boundary += "_"
    return boundary


def _postmaster_address(postmaster: str, reporting_mta: str) -> str:
    postmaster = _one_line(postmaster)
    return postmaster if "@" in postmaster else f"{postmaster or 'postmaster'}@{reporting_mta}"


def build_dsn(bounced: Reported, original: bytes, *, reporting_mta: str, postmaster: str,
              remote_mta: str = "", retry_until: str = "") -> bytes:
    """The complete DSN message (RFC 5322, CRLF lines) for `bounced`, to the original sender.

    `original` is the raw original message; only its header block is returned (b"": no third part).
    `postmaster` is the From address (a bare local part gets `@reporting_mta`). `remote_mta` names the
    host that gave the reply, when it is known and may be disclosed. `retry_until` (ISO 8601): for a
    delay, when the delivery will have expired. The result is a pure function of its arguments: the
    same event always gives the same bytes.
    """
    dsn_id = dsn_message_id(bounced)
    headers = header_block(original)
    parts = [_text_part(_human_text(bounced, reporting_mta, bool(headers), retry_until)),
             _delivery_status(bounced, reporting_mta, remote_mta, retry_until)]
    if headers:
        parts.append(_headers_part(headers))
    boundary = _boundary(dsn_id, parts)
    sender = _one_line(envelope_sender(bounced))
    head = (
        _fold("From", f"{FROM_NAME} <{_postmaster_address(postmaster, reporting_mta)}>")
        + f"To: <{sender}>{_CRLF}"
        + _fold("Subject", DELAYED_SUBJECT if isinstance(bounced, Deferred) else SUBJECT)
        + _fold("Date", _date(bounced.time))
        + _fold("Message-ID", f"<{dsn_id}@{_ascii(reporting_mta)}>")
        + _fold("Auto-Submitted", "auto-replied")
        + _fold("MIME-Version", "1.0")
        + f'Content-Type: multipart/report; report-type=delivery-status;{_CRLF}\tboundary="{boundary}"{_CRLF}'
    )
    delimiter = f"\r\n--{boundary}\r\n".encode("ascii")
    body = b"This is a MIME-encapsulated message.\r\n"
    for part in parts:
        body += delimiter + part
    body += f"\r\n--{boundary}--\r\n".encode("ascii")
    return head.encode("utf-8") + b"\r\n" + body
