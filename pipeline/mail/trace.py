"""Trace header (RFC 5321 4.4) and the header summary carried in `received` events."""
from __future__ import annotations

import email.utils
import time
from datetime import datetime

from pipeline.mail.headers import MessageHeader
from schemas.events import HeaderSummary

__all__ = ["received_header", "summarize_headers"]

_SUMMARY_LIMIT = 998  # one header line's worth; the summary is for analytics, not rendering


def received_header(
    *,
    helo: str,
    client_ip: str,
    reverse_name: str,
    by_host: str,
    protocol: str,
    message_id: str,
    recipients: list[str],
) -> bytes:
    """The `Received:` line the ingress prepends, folded, ending in CRLF."""
    client = f"{reverse_name or 'unknown'} [{client_ip}]"
    helo_part = _clean(helo) or "unknown"
    for_part = f"\r\n\tfor <{recipients[0]}>" if len(recipients) == 1 else ""
    date = _date_now()
    text = (
        f"Received: from {helo_part} ({client})\r\n"
        f"\tby {by_host} (poststelle) with {protocol} id {message_id}{for_part};\r\n"
        f"\t{date}\r\n"
    )
    return text.encode("utf-8", "surrogateescape")


_date_of_second: tuple[int, str] = (0, "")


def _date_now() -> str:
    """The RFC 5322 date of now in local time; formatted once a second (6 µs each time otherwise)."""
    global _date_of_second
    second = int(time.time())
    if _date_of_second[0] != second:
        _date_of_second = (second, email.utils.format_datetime(datetime.fromtimestamp(second).astimezone()))
    return _date_of_second[1]


def _clean(value: str) -> str:
    """HELO names are client-chosen: keep them on one line and without comment syntax."""
    return "".join(c for c in value if c.isprintable() and c not in "()\\")[:255]


def summarize_headers(header: MessageHeader) -> HeaderSummary:
    """Subject, From, To, Message-ID and Date (the first of each), decoded and cut to a sane length.

    From the parsed header (`pipeline.mail.headers`): the ingress passes the parse its checks used.
    """
    return HeaderSummary(
        subject=_summary(header.first("Subject")),
        header_from=_summary(header.first("From")),
        header_to=_summary(header.first("To")),
        message_id_header=_summary(header.first("Message-ID")),
        date=_summary(header.first("Date")),
    )


def _summary(value: str) -> str:
    return " ".join(value.split())[:_SUMMARY_LIMIT]
