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
    pipelining: bool = True  # offer PIPELINING (RFC 2920) in the EHLO/LHLO answer
    # the reply to DATA when no recipient was accepted (RFC 2920 3.1: refused); "354 ...": a broken server
    data_without_recipients: str = "554 5.5.1 Error: no valid recipients"


@dataclass
class Seen:
    commands: list[str] = field(default_factory=list)
    data: list[bytes] = field(default_factory=list)  # the raw DATA stream, stuffed, up to the final dot
    connections: int = 0
    # the commands as they arrived: those read from the server's buffer without waiting form one group
    groups: list[list[str]] = field(default_factory=list)


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
        in_mail = False  # a MAIL was accepted and its transaction is open
        self.seen.connections += 1
        try:
            say(self.script.greeting)
            if not self.script.greeting.startswith("220"):
                line = await reader.readline()  # a polite client says QUIT now (RFC 5321 3.1)
                if line:
                    self.seen.commands.append(line.decode().rstrip("\r\n"))
                    say("221 2.0.0 Bye")
                return
            while True:
                waited = not getattr(reader, "_buffer", b"")  # nothing of the client's next write read yet
                line = await reader.readline()
                if not line:
                    break
                assert line.endswith(b"\r\n"), line
                command = line[:-2].decode()
                self.seen.commands.append(command)
                if waited or not self.seen.groups:
                    self.seen.groups.append([])
                self.seen.groups[-1].append(command)
                verb = command.split(" ", 1)[0].upper()
                if verb in ("LHLO", "EHLO"):
                    say("250-lmtp.school.test", *(["250-PIPELINING"] if self.script.pipelining else []),
                        "250-ENHANCEDSTATUSCODES", "250 8BITMIME")
                elif verb in ("RCPT", "DATA") and not in_mail:  # after a refused MAIL, as RFC 2920 expects
                    say("503 5.5.1 Error: need MAIL command")
                elif verb == "MAIL":
                    mails += 1
                    accepted = []
                    reply = "250 2.1.0 Ok" if mails == 1 else self.script.second_mail
                    in_mail = reply.startswith("2")
                    say(reply)
                    if mails > 1 and self.script.second_mail.startswith("421"):
                        await writer.drain()
                        return
                elif verb == "RCPT":
                    rcpt = command[len("RCPT TO:<"):-1]
                    reply = self.script.rcpt.get(rcpt, "250 2.1.5 Ok")
                    if reply.startswith("2"):
                        accepted.append(rcpt)
                    say(reply)
                elif verb == "DATA" and not accepted and not self.script.data_without_recipients.startswith("354"):
                    say(self.script.data_without_recipients)
                    in_mail = False
                elif verb == "DATA":
                    in_mail = False
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
