"""The SMTP session events of the ingress (best effort, for analytics): connects, refusals, check results.

They precede a message, so their `message_id` is "" (a refusal at DATA names the message).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from schemas.base import Event
from schemas.parts import Reply

__all__ = ["SmtpConnect", "SmtpReject", "SmtpCheck"]


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
