"""SMTP replies of the ingress, with enhanced status codes (RFC 3463), in one place.

No reply carries internal details (exception texts, hostnames of backends): the operator finds those
in the log, the client gets a code that tells it what to do.
"""
from __future__ import annotations

import re

__all__ = ["Replies", "with_enhanced_code"]


class Replies:
    SENDER_OK = "250 2.1.0 Sender OK"
    RECIPIENT_OK = "250 2.1.5 Recipient OK"
    RELAY_DENIED = "554 5.7.1 Relaying denied: recipient domain is not local"
    BAD_RECIPIENT_SYNTAX = "501 5.1.3 Bad recipient address syntax"
    TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
    EARLY_TALKER = "554 5.5.1 Protocol error: talking before the greeting"
    AUTH_FAILED = "535 5.7.8 Authentication credentials invalid"
    AUTH_TEMPFAIL = "454 4.7.0 Temporary authentication failure, try again later"
    AUTH_NOT_AVAILABLE = "503 5.5.1 AUTH not available on this port"
    PERSIST_FAILED = "451 4.3.0 Temporary failure storing the message, try again later"
    INTERNAL_ERROR = "451 4.3.0 Temporary server error, try again later"
    SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"
    BARE_LINE_ENDING = "521 5.5.2 Error: bare <CR> or <LF> received (see RFC 5321 2.3.8); closing connection"
    NUL_CHARACTER = "521 5.6.0 Error: NUL character received; closing connection"
    TOO_MANY_HOPS = "554 5.4.6 Too many hops: mail loop suspected"

    @staticmethod
    def queued(message_id: str) -> str:
        return f"250 2.0.0 Ok: queued as {message_id}"


# default enhanced codes for replies aiosmtpd itself sends without one (RFC 3463, RFC 5248)
_DEFAULT_ENHANCED = {
    "250": "2.0.0",
    "221": "2.0.0",
    "252": "2.0.0",
    "421": "4.3.0",
    "450": "4.0.0",
    "451": "4.3.0",
    "452": "4.5.3",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "535": "5.7.8",
    "538": "5.7.11",
    "550": "5.0.0",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.0.0",
}
_HAS_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}( |$)")


def with_enhanced_code(reply: str) -> str:
    """Add the enhanced status code a 2xx/4xx/5xx reply lacks (RFC 2034 3; not the 220 greeting)."""
    if len(reply) < 4 or reply[0] not in "245" or reply.startswith("220") or _HAS_ENHANCED.match(reply):
        return reply
    code, sep, text = reply[:3], reply[3], reply[4:]
    enhanced = _DEFAULT_ENHANCED.get(code)
    if enhanced is None:
        enhanced = f"{code[0]}.0.0"
    return f"{code}{sep}{enhanced} {text}".rstrip()
