"""aiosmtpd's SMTP protocol, hardened for a gateway.

- DATA is read in blocks, not line by line (`ingress.smtp_data`), with aiosmtpd's limits and replies.
- Only CRLF ends a line. A bare LF or bare CR in a command, or anywhere in DATA, and a NUL byte, are
  refused with a 5xx and the connection is closed (the rest of the stream is suspect): this is the
  SMTP smuggling class of CVE-2023-51766, where a downstream MTA would see a second message.
- Every 2xx/4xx/5xx reply carries an enhanced status code (ENHANCEDSTATUSCODES is advertised).
- A multi-line reply (EHLO) leaves in one write: one TCP segment, not one per line.
- An unexpected exception answers ``451 4.3.0`` without the exception text (aiosmtpd's default is a
  ``500`` that leaks it).
- Before the banner the handler's `greet` runs (connection limits, the connect-phase checks, the
  early-talker wait); a refusal there is sent instead of the banner and the connection closes.
- A session's idle timer asks the handler (`idle_timeout`: shorter under stress); DATA always gets
  the full `timeout`.
- Too many erroneous commands (5xx syntax/sequence replies: unknown command, bad arguments, bad
  sequence) end the session with ``421 4.7.0`` (Postfix's smtpd_hard_error_limit).
- AUTH PLAIN and LOGIN call the handler's async `authenticate` (an LDAP bind must not block the
  event loop; aiosmtpd's own authenticator callback is synchronous).
"""
from __future__ import annotations

import asyncio
import base64
import logging
import re
from collections.abc import Callable
from typing import Any

import aiosmtpd.smtp
from aiosmtpd.smtp import SMTP, AuthResult

from ingress.replies import Replies, with_enhanced_code
from ingress.smtp_data import read_data
from ingress.smtp_fast import fast_init, install_cached_introspection, plain_angle_address
from pipeline.metrics import SMTP_REPLIES, SMTP_SESSIONS, SMTP_SESSIONS_ACTIVE

__all__ = ["IngressSMTP", "IllegalInput"]

log = logging.getLogger(__name__)

COMMAND_SEPARATOR = b"\n"  # aiosmtpd reads commands up to LF; DATA lines up to CRLF
# aiosmtpd ends a session after 5 unknown commands with its own 502; the ingress counts every
# erroneous command itself (max_bad_commands) and answers 421, so aiosmtpd's budget is lifted
aiosmtpd.smtp.BOGUS_LIMIT = 1_000_000
TOO_MANY_ERRORS = "421 4.7.0 Too many errors, closing connection"
_TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"  # aiosmtpd's texts
_TOO_MUCH = "552 Error: Too much mail data"
_ERROR_REPLIES = ("500", "501", "502", "503", "504")
install_cached_introspection()  # per-connection command tables from per-class memory (ingress.smtp_fast)
_ROUTED_RCPT = re.compile(r"\s*<(?P<address>[^<>\s@]+(?:@[^<>\s@]+){2,})>(?P<rest>(?:\s.*)?)")


_REPLY_COUNTERS: dict[str, Any] = {}  # code -> its counter (`labels()` takes 2 µs, a reply's `inc()` 0.3)


def _count_reply(status: str | bytes) -> None:
    """Count a reply by its code; a multi-line reply once, at its last line (``250 `` not ``250-``)."""
    text = status.decode("ascii", "replace") if isinstance(status, bytes) else status
    if len(text) >= 3 and text[:3].isdigit() and text[3:4] != "-":
        code = text[:3]  # three digits: at most 1000 counters
        counter = _REPLY_COUNTERS.get(code)
        if counter is None:
            counter = _REPLY_COUNTERS[code] = SMTP_REPLIES.labels(code)
        counter.inc()


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
    """A StreamReader that enforces CRLF line endings on command lines.

    A command line (or AUTH response) that breaks the rules raises `IllegalInput` at once. DATA is not
    read through here but in blocks (`ingress.smtp_data`), which checks its lines itself.
    `awaiting_command` is true while the session waits for the client's next command line (it is idle).
    """

    awaiting_command = False
    on_command_wait: Callable[[], None] | None = None  # the session is about to read its next command

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        command = separator == COMMAND_SEPARATOR
        if command and self.on_command_wait is not None and not self._buffer:
            self.on_command_wait()
        self.awaiting_command = command
        try:
            line = await super().readuntil(separator)
        finally:
            if command:
                self.awaiting_command = False
        reply = _illegal_reply(line)
        if reply is not None:
            raise IllegalInput(reply)
        return line


class IngressSMTP(SMTP):
    """The protocol object per connection; the handler (`ingress.handler`) decides everything.

    `max_bad_commands` is the number of erroneous commands a session may send; the next one ends it.
    `context` is the handler's per-connection state (it survives STARTTLS, which makes aiosmtpd start
    a new `session`).
    """

    def __init__(self, handler, *args, max_bad_commands: int = 10, **kwargs) -> None:
        if args or not fast_init(self, handler, **kwargs):  # aiosmtpd's work, from memory (ingress.smtp_fast)
            super().__init__(handler, *args, **kwargs)
        self.max_bad_commands = max_bad_commands
        self.bad_commands = 0
        self.context = None
        self._disconnected = False
        self._parsing_rcpt = False
        self._held_lines: list[bytes] = []

    def _cb_client_connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # aiosmtpd builds its StreamReader in __init__; give that same object the strict class.
        # (A wrapper would break STARTTLS, which writes to the reader's private attributes.)
        reader.__class__ = StrictStreamReader
        reader.on_command_wait = self._on_command_wait
        super()._cb_client_connected(reader, writer)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        starttls = self._original_transport is not None and self.transport is not None
        super().connection_made(transport)
        if not starttls:  # metrics: a new session (STARTTLS continues one)
            SMTP_SESSIONS.inc()
            SMTP_SESSIONS_ACTIVE.inc()
        on_tls = getattr(self.event_handler, "on_starttls", None)
        if starttls and on_tls is not None:
            on_tls(self)

    def connection_lost(self, error: Exception | None) -> None:
        on_disconnect = getattr(self.event_handler, "on_disconnect", None)
        if on_disconnect is not None and not self._disconnected:
            on_disconnect(self)
        if not self._disconnected:
            SMTP_SESSIONS_ACTIVE.dec()
        self._disconnected = True
        super().connection_lost(error)

    def _reset_timeout(self, duration: float | None = None) -> None:
        """aiosmtpd's idle timer (connect, every command): the handler's `idle_timeout` when it has one."""
        if duration is None:
            idle_timeout = getattr(self.event_handler, "idle_timeout", None)
            duration = idle_timeout() if idle_timeout is not None else None
        super()._reset_timeout(duration)

    async def _handle_client(self) -> None:
        greet = getattr(self.event_handler, "greet", None)
        if greet is not None:
            refusal = await greet(self)
            if refusal is not None:
                self._plain_replies = True  # a greeting-time refusal is a greeting: no rewriting
                try:
                    await self.push(refusal)
                finally:
                    self._plain_replies = False
                self.close_after_reply()
                return
        await super()._handle_client()

    # -- shutting down: 421 once the session waits for a command and has none buffered ---------------

    _goodbye: str | None = None
    _closing_after_reply = False

    def shut_down(self, reply: str) -> None:
        """End the session with `reply` (a 421) as soon as it waits for a command with none buffered.

        A busy session finishes its command first, and commands the client already pipelined are
        answered: closing with unread input would make the kernel send a reset, which can destroy a
        `250` the client has not read yet.
        """
        self._goodbye = reply
        if getattr(self._reader, "awaiting_command", False):
            self._on_command_wait()

    def _on_command_wait(self) -> None:
        if self._goodbye is not None and not self._closing_after_reply and self.transport is not None \
                and not self.transport.is_closing():
            _count_reply(self._goodbye)
            self.transport.write(self._goodbye.encode() + b"\r\n")
            self.transport.close()

    # the first NUL or bare CR/LF line of the last DATA: the handler refuses the message for it
    data_offence: str | None = None

    def clear_data_offence(self) -> None:
        self.data_offence = None

    # RFC 2034 3: no enhanced code in the greeting and in the replies to HELO and EHLO
    _plain_replies = False

    async def push(self, status: str | bytes) -> None:
        if isinstance(status, str) and not self._plain_replies:
            status = with_enhanced_code(status)
            if status[:3] in _ERROR_REPLIES:
                self.bad_commands += 1
                if self.bad_commands > self.max_bad_commands:
                    status = TOO_MANY_ERRORS
                    self.close_after_reply()
        _count_reply(status)
        line = status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii") if isinstance(status, str) else status
        if line[3:4] == b"-":  # a line of a multi-line reply (EHLO): held, sent with the reply's last line
            self._held_lines.append(line)
            return
        if self._held_lines:
            line = b"\r\n".join((*self._held_lines, line))
            self._held_lines.clear()
        self._writer.write(line + b"\r\n")  # one write (one TCP segment) per reply, where aiosmtpd's push
        await self._writer.drain()             # writes each line and logs it

    # -- AUTH: aiosmtpd parses, the handler verifies (asynchronously) ------------------------------

    async def auth_PLAIN(self, _, args: list[str]) -> AuthResult:
        if len(args) == 1:
            blob = await self.challenge_auth("")
            if blob is aiosmtpd.smtp.MISSING:
                return AuthResult(success=False, handled=True)
        else:
            try:
                blob = base64.b64decode(args[1].encode(), validate=True)
            except ValueError:
                return AuthResult(success=False, handled=False, message="501 5.5.2 Cannot decode base64")
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            return AuthResult(success=False, handled=False, message="501 5.5.2 Cannot split the PLAIN credentials")
        return await self._verify("PLAIN", parts[1], parts[2])

    async def auth_LOGIN(self, _, args: list[str]) -> AuthResult:
        if len(args) == 1:
            login = await self.challenge_auth(self.AuthLoginUsernameChallenge)
        else:
            try:
                login = base64.b64decode(args[1].encode(), validate=True)
            except ValueError:
                return AuthResult(success=False, handled=False, message="501 5.5.2 Cannot decode base64")
        if login is aiosmtpd.smtp.MISSING:
            return AuthResult(success=False, handled=True)
        password = await self.challenge_auth(self.AuthLoginPasswordChallenge)
        if password is aiosmtpd.smtp.MISSING:
            return AuthResult(success=False, handled=True)
        return await self._verify("LOGIN", login, password)

    async def _verify(self, mechanism: str, login: bytes, password: bytes) -> AuthResult:
        authenticate = getattr(self.event_handler, "authenticate", None)
        if authenticate is None:
            return AuthResult(success=False, handled=False, message="535 5.7.8 Authentication credentials invalid")
        return await authenticate(self, mechanism, login.decode("utf-8", "replace"),
                                  password.decode("utf-8", "replace"))

    async def smtp_HELO(self, hostname: str) -> None:
        self._plain_replies = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._plain_replies = False

    async def smtp_RCPT(self, arg: str) -> None:
        self._parsing_rcpt = True
        try:
            await super().smtp_RCPT(arg)
        finally:
            self._parsing_rcpt = False

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        plain = plain_angle_address(arg, self.local_part_limit)
        if plain is not None:
            return plain
        address, rest = super()._getaddr(arg)
        if address is None and self._parsing_rcpt:
            # `<r@ext.test@school.test>` is no RFC 5321 mailbox, but MTAs resolve it as a route:
            # hand it to the handler, which refuses it as such or resolves it for a trusted client
            routed = _ROUTED_RCPT.fullmatch(arg)
            if routed:
                return routed["address"], routed["rest"]
        return address, rest

    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA, with the data read in blocks (`ingress.smtp_data`), not line by line."""
        self.clear_data_offence()
        self._reset_timeout(self._timeout_duration)  # the message itself gets data_timeout, stress or not
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            block = await read_data(self._reader, self.data_size_limit, self.line_length_limit, _illegal_reply)
        except asyncio.CancelledError:
            log.info("connection lost during DATA")
            self._writer.close()
            raise
        if block.too_long or block.too_much:
            self._set_post_data_state()
            await self.push(_TOO_LONG if block.too_long else _TOO_MUCH)
            if block.offence is not None:  # the stream carried bare line endings too: the session ends
                self.close_after_reply()
            return
        self.data_offence = block.offence  # the handler refuses the message for it
        self.envelope.content = self.envelope.original_content = block.content
        status = await self._call_handler_hook("DATA") if "DATA" in self._handle_hooks else aiosmtpd.smtp.MISSING
        self._set_post_data_state()
        await self.push("250 OK" if status is aiosmtpd.smtp.MISSING else status)

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
                on_violation(self, error.reply)
            return error.reply
        log.error("session %r: unexpected error", self.session and self.session.peer, exc_info=error)
        return Replies.INTERNAL_ERROR

    def close_after_reply(self) -> None:
        """Close the connection once the reply being pushed has been written."""
        if self.transport is not None:
            self._closing_after_reply = True
            self.loop.call_soon(self._close_transport)

    def _close_transport(self) -> None:
        if self.transport is not None:
            self.transport.close()
