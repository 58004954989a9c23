"""A fake clamd for unit tests: a real asyncio server on loopback (TCP or unix socket) that speaks
clamd's z-command protocol (PING, VERSION, INSTREAM with length-prefixed chunks, IDSESSION ... END
with numbered answers) and records what it was sent. Its verdicts come from markers in the stream;
`mode` makes it misbehave, `session_commands` closes a session after that many commands (clamd's
IdleTimeout or a restart)."""
from __future__ import annotations

import asyncio
import contextlib
import struct
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["FAKE_DEEP", "FAKE_VIRUS", "FakeClamd"]

FAKE_VIRUS = b"FAKE-VIRUS-MARKER"  # answered "stream: Fake.Virus.Test FOUND"
FAKE_DEEP = b"FAKE-TOO-DEEP-MARKER"  # answered "stream: Heuristics.Limits.Exceeded.MaxRecursion FOUND"


@dataclass
class FakeClamd:
    # normal | error (an ERROR answer) | silent (reads, never answers) | hangup (closes, no answer)
    # | garbage (an answer that is no verdict)
    mode: str = "normal"
    stream_max_length: int = 1_000_000
    unix_path: Path | None = None
    streams: list[bytes] = field(default_factory=list)  # every complete INSTREAM received
    chunk_sizes: list[int] = field(default_factory=list)
    commands: list[bytes] = field(default_factory=list)
    connections: int = 0
    session_commands: int = 0  # > 0: a session is closed, unanswered, at its command after this many
    port: int = 0
    _server: asyncio.AbstractServer | None = None
    _open: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def address(self) -> str:
        return f"unix:{self.unix_path}" if self.unix_path else f"127.0.0.1:{self.port}"

    async def __aenter__(self) -> FakeClamd:
        if self.unix_path is not None:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.unix_path))
        else:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._open):  # a clamd that stops ends its sessions too
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._open.add(writer)
        try:
            command = (await reader.readuntil(b"\0")).rstrip(b"\0")
            self.commands.append(command)
            if command == b"zIDSESSION":
                await self._session(reader, writer)
                return
            reply = await self._answer(command, reader)
            if reply is not None:
                writer.write(reply.encode() + b"\0")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._open.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """clamd's IDSESSION: answers numbered from 1 until END; an ERROR answer ends the session."""
        number = 0
        while True:
            command = (await reader.readuntil(b"\0")).rstrip(b"\0")
            self.commands.append(command)
            if command == b"zEND":
                return
            number += 1
            if self.session_commands and number > self.session_commands:
                return  # closed without an answer
            reply = await self._answer(command, reader)
            if reply is None:
                return
            writer.write(f"{number}: {reply}".encode() + b"\0")
            await writer.drain()
            if reply.endswith("ERROR"):
                return

    async def _answer(self, command: bytes, reader: asyncio.StreamReader) -> str | None:
        if self.mode == "hangup":
            return None
        if self.mode == "silent":
            await asyncio.sleep(3600)
        if command == b"zPING":
            return "PONG"
        if command == b"zVERSION":
            return "ClamAV 0.0-fake"
        if command != b"zINSTREAM":
            return "UNKNOWN COMMAND"
        data = b""
        while True:
            (size,) = struct.unpack(">I", await reader.readexactly(4))
            if size == 0:
                break
            if len(data) + size > self.stream_max_length:
                return "INSTREAM size limit exceeded. ERROR"
            self.chunk_sizes.append(size)
            data += await reader.readexactly(size)
        self.streams.append(data)
        if self.mode == "error":
            return "stream: Can't allocate memory ERROR"
        if self.mode == "garbage":
            return "what?"
        if FAKE_VIRUS in data:
            return "stream: Fake.Virus.Test FOUND"
        if FAKE_DEEP in data:
            return "stream: Heuristics.Limits.Exceeded.MaxRecursion FOUND"
        return "stream: OK"
