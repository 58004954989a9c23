"""aiosmtpd's SMTP protocol, hardened for a gateway.

- Only CRLF ends a line. A bare LF or bare CR in a command, or anywhere in DATA, and a NUL byte, are
  refused with a 5xx and the connection is closed (the rest of the stream is suspect): this is the
  SMTP smuggling class of CVE-2023-51766, where a downstream MTA would see a second message.
- Every 2xx/4xx/5xx reply carries an enhanced status code (ENHANCEDSTATUSCODES is advertised).
- An unexpected exception answers ``451 4.3.0`` without the exception text (aiosmtpd's default is a
  ``500`` that leaks it).
"""
from __future__ import annotations

import asyncio
import logging

from aiosmtpd.smtp import SMTP

from ingress.replies import Replies, with_enhanced_code

__all__ = ["IngressSMTP", "IllegalInput"]

log = logging.getLogger(__name__)

COMMAND_SEPARATOR = b"\n"  # aiosmtpd reads commands up to LF; DATA lines up to CRLF


class IllegalInput(Exception):
    """The client sent bytes no SMTP client may send; the session ends."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


def _illegal_reply(line: bytes) -> str | None:
    """The reply for a line (with its terminator) that breaks the line rules, or None."""
    if b"\x00" in line:
        return Replies.NUL_CHARACTER
    body = line[:-2] if line.endswith(b"\r\n") else line
    if not line.endswith(b"\r\n") or b"\r" in body or b"\n" in body:
        return Replies.BARE_LINE_ENDING
    return None


class StrictStreamReader(asyncio.StreamReader):
    """A StreamReader that enforces CRLF line endings.

    Command lines that break the rules raise `IllegalInput` at once. DATA lines cannot be refused
    mid-stream (the client is still sending), so the first offence is remembered in `data_offence`
    and the ingress refuses the message when DATA ends.
    """

    data_offence: str | None = None

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        line = await super().readuntil(separator)
        reply = _illegal_reply(line)
        if reply is not None:
            if separator == COMMAND_SEPARATOR:
                raise IllegalInput(reply)
            if self.data_offence is None:
                self.data_offence = reply
        return line


class IngressSMTP(SMTP):
    """The protocol object per connection; the handler (`ingress.handler`) decides everything."""

    def _cb_client_connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # aiosmtpd builds its StreamReader in __init__; give that same object the strict class.
        # (A wrapper would break STARTTLS, which writes to the reader's private attributes.)
        reader.__class__ = StrictStreamReader
        super()._cb_client_connected(reader, writer)
        on_connect = getattr(self.event_handler, "on_connect", None)
        if on_connect is not None:
            on_connect(self.session)

    @property
    def data_offence(self) -> str | None:
        return getattr(self._reader, "data_offence", None)

    def clear_data_offence(self) -> None:
        if isinstance(self._reader, StrictStreamReader):
            self._reader.data_offence = None

    # RFC 2034 3: no enhanced code in the greeting and in the replies to HELO and EHLO
    _plain_replies = False

    async def push(self, status: str | bytes) -> None:
        if isinstance(status, str) and not self._plain_replies:
            status = with_enhanced_code(status)
        await super().push(status)

    async def smtp_HELO(self, hostname: str) -> None:
        self._plain_replies = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._plain_replies = False

    async def smtp_DATA(self, arg: str) -> None:
        self.clear_data_offence()
        await super().smtp_DATA(arg)
        if self.data_offence is not None:
            # aiosmtpd answered DATA itself (size or line limit) without asking the handler; the
            # stream still carried bare line endings, so the session ends here too
            self.clear_data_offence()
            self.close_after_reply()

    async def smtp_EHLO(self, hostname: str) -> None:
        self._plain_replies = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._plain_replies = False

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, IllegalInput):
            self.close_after_reply()
            on_violation = getattr(self.event_handler, "on_protocol_violation", None)
            if on_violation is not None:
                on_violation(self.session, error.reply)
            return error.reply
        log.error("session %r: unexpected error", self.session and self.session.peer, exc_info=error)
        return Replies.INTERNAL_ERROR

    def close_after_reply(self) -> None:
        """Close the connection once the reply being pushed has been written."""
        if self.transport is not None:
            self.loop.call_soon(self._close_transport)

    def _close_transport(self) -> None:
        if self.transport is not None:
            self.transport.close()
