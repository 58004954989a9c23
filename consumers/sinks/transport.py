"""Delivery transports: how a sink hands a message to the next hop.

Sinks talk to a `DeliveryTransport`; tests swap the transport, not the sink (httpx's model). The
real one here speaks LMTP (RFC 2033) — per-recipient replies after DATA — or SMTP (RFC 5321) over
asyncio streams, optionally with TLS (STARTTLS, RFC 3207, or TLS from the first byte) and AUTH
(RFC 4954: PLAIN, or LOGIN when only that is offered).

A problem on our side of the TLS or AUTH set-up (no TLS where it is required, a certificate that
does not verify, credentials the smarthost refuses, no AUTH offered) is answered for every recipient
with a 4xx reply (454 4.7.0, the text says why): the delivery is deferred, never sent in clear and
never bounced to the sender for a fault of ours.

Pipelining (RFC 2920): when the server offers PIPELINING (every LMTP server must, RFC 2033 5), MAIL,
the RCPTs and DATA go out in one write (up to `PIPELINE_GROUP` commands) and their replies are read
after it, as Postfix does: one round trip where there were two plus one per recipient. The server
refuses DATA when it accepted no recipient; a broken one that answers it with 354 anyway gets an
empty message, and the connection is not kept.

Connection reuse (Postfix's connection cache): with `reuse_seconds` above 0, a session whose last
transaction ended normally (DATA sent, every reply read) is kept for the next delivery instead of
QUIT (`consumers.sinks.session_cache`): closed with QUIT after `reuse_seconds` unused, not reused
once it is older than `REUSE_LIFETIME`. A kept session that turns out dead at the next MAIL (closed,
reset, a 421) costs nothing: nothing of the delivery was accepted yet, so it goes over a new
connection.
"""
from __future__ import annotations

import asyncio
import base64
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from consumers.sinks.session_cache import SessionCache
from schemas.events import Reply

__all__ = [
    "DeliveryTransport",
    "Delivery",
    "SmtpClientTransport",
    "RefusedGreeting",
    "TLS_MODES",
    "client_ssl_context",
    "parse_extensions",
    "parse_reply_text",
    "tls_handshake_failed",
]

# none: plain; opportunistic: STARTTLS when offered; required: STARTTLS or defer; implicit: TLS first
TLS_MODES = ("none", "opportunistic", "required", "implicit")
# pipelined commands per write: the replies of one group (about 30 bytes each) fit any socket buffer,
# so a transaction to many recipients cannot deadlock with both sides writing (RFC 2920 3.2)
PIPELINE_GROUP = 100


@dataclass(frozen=True, slots=True)
class Delivery:
    mail_from: str
    recipients: list[str]
    data: bytes  # the rendered message, CRLF line endings
    smtputf8: bool = False
    body_8bit: bool = False


class DeliveryTransport(Protocol):
    async def deliver(self, delivery: Delivery) -> dict[str, Reply]:
        """Deliver and return one reply per recipient. A connection failure raises OSError."""


_ENHANCED = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})(?:\s+|$)")
_EXTENSION = re.compile(r"([A-Za-z0-9][A-Za-z0-9-]*)(?:[ =](.*))?$")


def parse_reply_text(code: int, text: str) -> Reply:
    match = _ENHANCED.match(text)
    if match:
        return Reply(code=code, enhanced=match.group(1), text=text[match.end():])
    return Reply(code=code, text=text)


def parse_extensions(lines: list[str]) -> dict[str, str]:
    """EHLO/LHLO keywords (upper case) → their parameters; `AUTH=LOGIN` (pre-RFC 4954) counts as AUTH."""
    extensions: dict[str, str] = {}
    for line in lines:
        match = _EXTENSION.match(line.strip())
        if match:
            keyword = match.group(1).upper()
            extensions[keyword] = f"{extensions.get(keyword, '')} {match.group(2) or ''}".strip()
    return extensions


def client_ssl_context(verify: bool, ca_file: str = "") -> ssl.SSLContext:
    """TLS 1.2+ client context. With `verify` the chain must lead to the system's CAs or to those in
    `ca_file` (an extra PEM bundle) and the certificate must name the host connected to; without,
    any certificate is accepted (encryption against passive eavesdroppers only)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif ca_file:
        if not Path(ca_file).is_file():
            raise FileNotFoundError(f"CA file {ca_file} does not exist")
        context.load_verify_locations(cafile=ca_file)
    return context


def _defer(why: str) -> Reply:
    return Reply(code=454, enhanced="4.7.0", text=why)


_HANDSHAKE_FAILED = "TLS handshake with "


def tls_handshake_failed(replies: dict[str, Reply]) -> bool:
    """Whether these replies are the transport's own for a failed TLS handshake (nothing was sent)."""
    return bool(replies) and all(r.code == 454 and r.enhanced == "4.7.0" and r.text.startswith(_HANDSHAKE_FAILED)
                                 for r in replies.values())


def _said(reply: Reply) -> str:
    return " ".join(str(p) for p in (reply.code, reply.enhanced, reply.text) if p)


class _Refused(Exception):
    """The session cannot deliver: `reply` applies to every recipient."""

    def __init__(self, reply: Reply, *, quit: bool = True) -> None:
        super().__init__(reply.text)
        self.reply, self.quit = reply, quit


class RefusedGreeting(OSError):
    """The server greeted with something else than 220 (`skip_refusing_greeting`): try another host."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(_said(reply))
        self.reply = reply


class _Stale(Exception):
    """A kept session failed before the delivery's MAIL was accepted: use a new connection."""


class _Session:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float,
                 encrypted: bool = False) -> None:
        self.reader, self.writer, self.timeout = reader, writer, timeout
        self.encrypted = encrypted
        self.pipelining = False  # the server offered PIPELINING in its (last) EHLO/LHLO answer
        self.opened = asyncio.get_running_loop().time()

    def alive(self) -> bool:
        """Still open, and nothing unasked-for from the server (such as a 421 before it closes)."""
        return not self.writer.is_closing() and not self.reader.at_eof() and not self.unread()

    async def reply_lines(self) -> tuple[int, list[str]]:
        lines: list[str] = []
        while True:
            raw = await asyncio.wait_for(self.reader.readline(), self.timeout)
            if not raw:
                raise ConnectionError("connection closed by server")
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if len(line) < 3 or not line[:3].isdigit():
                raise ConnectionError(f"malformed reply line {line[:80]!r}")
            lines.append(line[4:])
            if len(line) == 3 or line[3] == " ":
                return int(line[:3]), lines

    async def reply(self) -> Reply:
        code, lines = await self.reply_lines()
        return parse_reply_text(code, " ".join(lines).strip())

    async def send(self, *lines: str) -> None:
        self.writer.write(b"".join(line.encode("utf-8") + b"\r\n" for line in lines))
        await self.writer.drain()

    async def command(self, line: str) -> Reply:
        await self.send(line)
        return await self.reply()

    def unread(self) -> int:
        """Bytes received but not read yet (StreamReader keeps no public count)."""
        return len(getattr(self.reader, "_buffer", b""))

    async def start_tls(self, context: ssl.SSLContext, server_hostname: str) -> None:
        await self.writer.start_tls(context, server_hostname=server_hostname,
                                    ssl_handshake_timeout=self.timeout)
        self.encrypted = True

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


def dot_stuff(data: bytes) -> bytes:
    """Transparency (RFC 5321 4.5.2) plus the terminating dot; `data` must use CRLF."""
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..") + b".\r\n"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


class SmtpClientTransport:
    """LMTP (`lmtp=True`) or SMTP delivery to one server; connections kept for `reuse_seconds` (0: one per delivery).

    `tls` is one of `TLS_MODES`; `ssl_context` defaults to a verifying one (`client_ssl_context`),
    checked against `server_name` (default: `host`; the MX sink connects to an address and checks the
    MX host's name). `peer` names the next hop in the replies it makes up ("smarthost", "MX host").
    With `username`, AUTH follows EHLO, and only over TLS unless tls="none". `skip_refusing_greeting`
    (the MX sink): a greeting other than 220 raises `RefusedGreeting` instead of being every
    recipient's reply, so the caller tries the next host (Postfix's smtp_skip_4xx/5xx_greeting).
    """

    def __init__(self, host: str, port: int, *, lmtp: bool, helo_name: str, timeout: float = 60.0,
                 tls: str = "none", ssl_context: ssl.SSLContext | None = None, username: str = "",
                 password: str = "", server_name: str = "", peer: str = "smarthost",
                 reuse_seconds: float = 0.0, skip_refusing_greeting: bool = False) -> None:
        if tls not in TLS_MODES:
            raise ValueError(f"tls: expected one of {', '.join(TLS_MODES)}, got {tls!r}")
        self.reuse_seconds, self.skip_refusing_greeting = reuse_seconds, skip_refusing_greeting
        self._kept: SessionCache[_Session] = SessionCache(reuse_seconds, self._quit_and_close)
        self.host, self.port, self.lmtp = host, port, lmtp
        self.helo_name, self.timeout = helo_name, timeout
        self.tls, self.username, self.password = tls, username, password
        self.server_name, self.peer = server_name or host, peer
        self.ssl_context = ssl_context if ssl_context is not None or tls == "none" else client_ssl_context(True)

    def __repr__(self) -> str:  # never show the password
        return f"SmtpClientTransport({self.host}:{self.port}, lmtp={self.lmtp}, tls={self.tls})"

    async def deliver(self, delivery: Delivery) -> dict[str, Reply]:
        kept = self._kept.take()
        if kept is not None:
            try:
                return await self._deliver_over(kept, delivery, reused=True)
            except _Stale:
                await kept.close()
        try:
            session = await self._connect()
        except ssl.SSLError as exc:  # implicit TLS: the handshake is part of connecting
            return dict.fromkeys(delivery.recipients, _defer(f"{_HANDSHAKE_FAILED}{self.peer} failed: {exc}"))
        return await self._deliver_over(session, delivery, reused=False)

    async def close(self) -> None:
        """QUIT and close the kept sessions (a sink calls this when it stops)."""
        await self._kept.close()

    async def _deliver_over(self, session: _Session, delivery: Delivery, *, reused: bool) -> dict[str, Reply]:
        """One transaction; the session is then kept or closed (a `_Stale` one is the caller's)."""
        try:
            replies, keep = await self._transaction(session, delivery, reused)
        except _Refused as refused:
            if refused.quit:
                await self._quit(session)
            await session.close()
            return dict.fromkeys(delivery.recipients, refused.reply)
        except RefusedGreeting:
            await self._quit_and_close(session)
            raise
        except _Stale:
            raise
        except BaseException:
            await session.close()
            raise
        if keep:
            self._kept.keep(session)
        else:
            await session.close()
        return replies

    async def _quit_and_close(self, session: _Session) -> None:
        if session.alive():
            await self._quit(session)
        await session.close()

    async def _connect(self) -> _Session:
        context = self.ssl_context if self.tls == "implicit" else None
        tls_args = dict(ssl=context, server_hostname=self.server_name,
                        ssl_handshake_timeout=self.timeout) if context else {}
        reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port, **tls_args),
                                                self.timeout)
        return _Session(reader, writer, self.timeout, encrypted=context is not None)

    async def _transaction(self, s: _Session, d: Delivery, reused: bool) -> tuple[dict[str, Reply], bool]:
        """Every recipient's reply, and whether the session may be kept for the next delivery."""
        if not reused:
            greeting = await s.reply()
            if greeting.code != 220:
                raise RefusedGreeting(greeting) if self.skip_refusing_greeting else _Refused(greeting)
            extensions = await self._hello(s)
            if self.tls in ("opportunistic", "required"):
                extensions = await self._starttls(s, extensions)
            if self.username:
                await self._authenticate(s, extensions)
        replies, accepted, data_reply = await self._envelope(s, d, reused)
        completed = False
        if accepted and data_reply is not None:
            data_replies, completed = await self._data(s, d, accepted, data_reply)
            replies.update(data_replies)
        elif data_reply is not None and data_reply.code == 354:  # pipelined DATA the server should have refused
            await s.send(".")
        if completed and self.reuse_seconds > 0:
            return replies, True
        await self._quit(s)
        return replies, False

    async def _hello(self, s: _Session) -> dict[str, str]:
        await s.send(f"{'LHLO' if self.lmtp else 'EHLO'} {self.helo_name}")
        code, lines = await s.reply_lines()
        if code != 250:
            raise _Refused(parse_reply_text(code, " ".join(lines).strip()))
        extensions = parse_extensions(lines[1:])
        s.pipelining = "PIPELINING" in extensions
        return extensions

    async def _starttls(self, s: _Session, extensions: dict[str, str]) -> dict[str, str]:
        """STARTTLS and a new EHLO (RFC 3207 4.2); opportunistic mode goes on in clear when not offered."""
        if "STARTTLS" not in extensions:
            if self.tls == "required":
                raise _Refused(_defer(f"TLS not available at {self.peer}"))
            return extensions
        reply = await s.command("STARTTLS")
        if reply.code != 220:
            if self.tls == "required":
                raise _Refused(_defer(f"TLS not available at {self.peer}: STARTTLS answered {_said(reply)}"))
            return extensions
        if s.unread():  # plaintext injected ahead of the handshake (the CVE-2011-0411 attack)
            raise _Refused(_defer(f"{self.peer} sent data ahead of the TLS handshake"), quit=False)
        assert self.ssl_context is not None
        try:
            await s.start_tls(self.ssl_context, self.server_name)
        except ssl.SSLError as exc:
            raise _Refused(_defer(f"{_HANDSHAKE_FAILED}{self.peer} failed: {exc}"), quit=False) from None
        return await self._hello(s)

    async def _authenticate(self, s: _Session, extensions: dict[str, str]) -> None:
        if not s.encrypted and self.tls != "none":
            raise _Refused(_defer(f"{self.peer} offers no TLS; credentials are not sent in clear"))
        mechanisms = extensions.get("AUTH", "").upper().split()
        if "PLAIN" in mechanisms:
            reply = await s.command(f"AUTH PLAIN {_b64(chr(0) + self.username + chr(0) + self.password)}")
        elif "LOGIN" in mechanisms:
            reply = await self._auth_login(s)
        elif "AUTH" in extensions:
            raise _Refused(_defer(f"{self.peer} offers no AUTH mechanism we use (PLAIN, LOGIN): "
                                  f"{' '.join(mechanisms)}"))
        else:
            raise _Refused(_defer(f"{self.peer} does not offer AUTH"))
        if reply.code != 235:
            raise _Refused(_defer(f"AUTH at {self.peer} failed: {_said(reply)}"))

    async def _auth_login(self, s: _Session) -> Reply:
        reply = await s.command("AUTH LOGIN")
        for secret in (self.username, self.password):
            if reply.code != 334:
                return reply
            reply = await s.command(_b64(secret))
        return reply

    async def _envelope(self, s: _Session, d: Delivery,
                        reused: bool) -> tuple[dict[str, Reply], list[str], Reply | None]:
        """MAIL, one RCPT per recipient and DATA: every recipient's reply, those accepted, and the reply
        to DATA (None: not sent, as no recipient was accepted). A pipelining server gets the commands in
        writes of `PIPELINE_GROUP` and DATA with the last; any other one command at a time."""
        params = (" BODY=8BITMIME" if d.body_8bit else "") + (" SMTPUTF8" if d.smtputf8 else "")
        lines = [f"MAIL FROM:<{d.mail_from}>{params}"] + [f"RCPT TO:<{rcpt}>" for rcpt in d.recipients]
        lines += ["DATA"] if s.pipelining else []
        step = PIPELINE_GROUP if s.pipelining else 1
        answers: list[Reply] = []
        for start in range(0, len(lines), step):
            group = lines[start:start + step]
            try:
                await s.send(*group)
                first = await s.reply()
            except (OSError, asyncio.TimeoutError):
                if reused and start == 0:  # the kept connection died while it waited: nothing was accepted yet
                    raise _Stale from None
                raise
            if start == 0 and first.code != 250:  # MAIL refused
                if reused and first.code == 421:
                    raise _Stale
                raise _Refused(first)
            answers += [first] + [await s.reply() for _ in group[1:]]
        replies = dict(zip(d.recipients, answers[1:]))
        accepted = [r for r in d.recipients if replies[r].code in (250, 251)]
        if s.pipelining:
            return replies, accepted, answers[-1]
        return replies, accepted, (await s.command("DATA") if accepted else None)

    async def _data(self, s: _Session, d: Delivery, accepted: list[str],
                    data_reply: Reply) -> tuple[dict[str, Reply], bool]:
        """The replies after the message, and whether the transaction ended normally (the message was sent)."""
        if data_reply.code != 354:
            return dict.fromkeys(accepted, data_reply), False
        s.writer.write(dot_stuff(d.data))
        await s.writer.drain()
        if self.lmtp:  # one reply per accepted recipient, in RCPT order (RFC 2033 4.2)
            return {rcpt: await s.reply() for rcpt in accepted}, True
        return dict.fromkeys(accepted, await s.reply()), True

    async def _quit(self, s: _Session) -> None:
        try:
            await s.command("QUIT")
        except (OSError, asyncio.TimeoutError):
            pass
