"""A scripted LMTP/SMTP server for the transport's tests (the `serve` fixture in conftest.py starts it)."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass
class Script:
    rcpt: dict[str, str] = field(default_factory=dict)  # recipient -> reply at RCPT (default 250)
    after_data: dict[str, str] = field(default_factory=dict)  # recipient -> reply after DATA (LMTP)
    final: str = "250 2.0.0 Ok: queued"  # SMTP: the one reply after DATA
    greeting: str = "220 lmtp.school.test LMTP ready"
    transactions_per_connection: int = 0  # > 0: hang up after this many (a server's idle timeout)
    second_mail: str = "250 2.1.0 Ok"  # the reply to every MAIL after a connection's first


@dataclass
class Seen:
    commands: list[str] = field(default_factory=list)
    data: list[bytes] = field(default_factory=list)  # the raw DATA stream, stuffed, up to the final dot
    connections: int = 0


class ScriptedServer:
    def __init__(self, script: Script) -> None:
        self.script, self.seen = script, Seen()
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def say(*lines: str) -> None:
            writer.write(b"".join(line.encode() + b"\r\n" for line in lines))

        accepted: list[str] = []
        mails = transactions = 0
        self.seen.connections += 1
        try:
            say(self.script.greeting)
            if not self.script.greeting.startswith("220"):
                return
            while line := await reader.readline():
                assert line.endswith(b"\r\n"), line
                command = line[:-2].decode()
                self.seen.commands.append(command)
                verb = command.split(" ", 1)[0].upper()
                if verb in ("LHLO", "EHLO"):
                    say("250-lmtp.school.test", "250-PIPELINING", "250-ENHANCEDSTATUSCODES", "250 8BITMIME")
                elif verb == "MAIL":
                    mails += 1
                    accepted = []
                    say("250 2.1.0 Ok" if mails == 1 else self.script.second_mail)
                    if mails > 1 and self.script.second_mail.startswith("421"):
                        await writer.drain()
                        return
                elif verb == "RCPT":
                    rcpt = command[len("RCPT TO:<"):-1]
                    reply = self.script.rcpt.get(rcpt, "250 2.1.5 Ok")
                    if reply.startswith("2"):
                        accepted.append(rcpt)
                    say(reply)
                elif verb == "DATA":
                    say("354 End data with <CR><LF>.<CR><LF>")
                    await writer.drain()
                    stream = b""
                    while not (stream.endswith(b"\r\n.\r\n") or stream == b".\r\n"):
                        chunk = await reader.readline()
                        assert chunk, "connection closed in DATA"
                        stream += chunk
                    self.seen.data.append(stream)
                    if self.seen.commands[0].startswith("LHLO"):  # LMTP: one reply per accepted rcpt
                        say(*(self.script.after_data.get(r, "250 2.0.0 Saved") for r in accepted))
                    else:
                        say(self.script.final)
                    transactions += 1
                    if transactions == self.script.transactions_per_connection:
                        await writer.drain()
                        return
                elif verb == "QUIT":
                    say("221 2.0.0 Bye")
                    await writer.drain()
                    return
                else:
                    say("502 5.5.1 Unknown command")
                await writer.drain()
        finally:
            writer.close()
