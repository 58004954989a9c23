"""Delivery transports: how a sink hands a message to the next hop.

Sinks talk to a `DeliveryTransport`; tests swap the transport, not the sink (httpx's model). The
real one here speaks LMTP (RFC 2033) — per-recipient replies after DATA — or SMTP (RFC 5321) over
asyncio streams.
"""
from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Protocol

from schemas.events import Reply

__all__ = ["DeliveryTransport", "Delivery", "SmtpClientTransport", "parse_reply_text"]


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


def parse_reply_text(code: int, text: str) -> Reply:
    match = _ENHANCED.match(text)
    if match:
        return Reply(code=code, enhanced=match.group(1), text=text[match.end():])
    return Reply(code=code, text=text)


class _Session:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float) -> None:
        self.reader, self.writer, self.timeout = reader, writer, timeout

    async def reply(self) -> Reply:
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
                return parse_reply_text(int(line[:3]), " ".join(lines).strip())

    async def command(self, line: str) -> Reply:
        self.writer.write(line.encode("utf-8") + b"\r\n")
        await self.writer.drain()
        return await self.reply()


def dot_stuff(data: bytes) -> bytes:
    """Transparency (RFC 5321 4.5.2) plus the terminating dot; `data` must use CRLF."""
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..") + b".\r\n"


class SmtpClientTransport:
    """LMTP (`lmtp=True`) or plain SMTP delivery to one server, one connection per delivery."""

    def __init__(self, host: str, port: int, *, lmtp: bool, helo_name: str, timeout: float = 60.0) -> None:
        self.host, self.port, self.lmtp = host, port, lmtp
        self.helo_name, self.timeout = helo_name, timeout

    async def deliver(self, delivery: Delivery) -> dict[str, Reply]:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self.timeout)
        session = _Session(reader, writer, self.timeout)
        try:
            return await self._transaction(session, delivery)
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass

    async def _transaction(self, s: _Session, d: Delivery) -> dict[str, Reply]:
        greeting = await s.reply()
        if greeting.code != 220:
            return dict.fromkeys(d.recipients, greeting)
        hello = await s.command(f"{'LHLO' if self.lmtp else 'EHLO'} {self.helo_name}")
        if hello.code != 250:
            return dict.fromkeys(d.recipients, hello)
        params = (" BODY=8BITMIME" if d.body_8bit else "") + (" SMTPUTF8" if d.smtputf8 else "")
        mail = await s.command(f"MAIL FROM:<{d.mail_from}>{params}")
        if mail.code != 250:
            return dict.fromkeys(d.recipients, mail)
        replies: dict[str, Reply] = {}
        accepted: list[str] = []
        for rcpt in d.recipients:
            reply = await s.command(f"RCPT TO:<{rcpt}>")
            replies[rcpt] = reply
            if reply.code in (250, 251):
                accepted.append(rcpt)
        if not accepted:
            await self._quit(s)
            return replies
        data_reply = await s.command("DATA")
        if data_reply.code != 354:
            return {**replies, **dict.fromkeys(accepted, data_reply)}
        s.writer.write(dot_stuff(d.data))
        await s.writer.drain()
        if self.lmtp:  # one reply per accepted recipient, in RCPT order (RFC 2033 4.2)
            for rcpt in accepted:
                replies[rcpt] = await s.reply()
        else:
            final = await s.reply()
            replies.update(dict.fromkeys(accepted, final))
        await self._quit(s)
        return replies

    async def _quit(self, s: _Session) -> None:
        try:
            await s.command("QUIT")
        except (OSError, asyncio.TimeoutError):
            pass
