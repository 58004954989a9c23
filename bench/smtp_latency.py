"""SMTP load with per-message latency: the time from the end of DATA to the server's reply.

smtp-source prints no latencies, so bench/ingress.sh runs this client with the same load shape:
`--sessions` concurrent sessions, `--messages` in total, `--size` bytes of body, no PIPELINING (as
smtp-source), and either one connection per message or, with `--reuse`, all messages of a session
over one connection (smtp-source -d). With `--rate R` the messages are paced: message i is not sent
before start + i/R (for latency at a load the server keeps up with). The clock for one message starts after the final "." line is
written and stops when the reply line arrives (asyncio, time.perf_counter). Only loopback.

    .venv/bin/python bench/smtp_latency.py --port 2525 [--sessions 20] [--messages 10000] [--size 4096]
                                           [--reuse] [--rate MSGS_PER_S]

Prints one line: accepted, refused, wall time, messages/s, p50/p99/max latency in ms.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import time

LINE = b"x" * 78 + b"\r\n"


def message(size: int, sender: str, recipient: str, n: int) -> bytes:
    head = (f"From: <{sender}>\r\nTo: <{recipient}>\r\nSubject: bench {n}\r\n"
            f"Message-ID: <bench-{n}-{time.time_ns()}@bench.invalid>\r\n\r\n").encode()
    body = LINE * (size // len(LINE)) + b"y" * (size % len(LINE)) + b"\r\n"
    return head + body + b".\r\n"


async def reply(reader: asyncio.StreamReader) -> int:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("server closed the connection")
        if line[3:4] != b"-":
            return int(line[:3])


async def command(reader, writer, line: str, expect: int) -> None:
    writer.write(line.encode() + b"\r\n")
    code = await reply(reader)
    if code != expect:
        raise RuntimeError(f"{line.split()[0]}: {code}")


class Load:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.left = args.messages
        self.started = time.perf_counter()
        self.latencies: list[float] = []
        self.refused = 0

    async def session(self) -> None:
        a = self.args
        reader = writer = None
        while self.left > 0:
            self.left -= 1
            if a.rate:
                due = self.started + (a.messages - self.left - 1) / a.rate
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
            if writer is None:
                reader, writer = await asyncio.open_connection(a.host, a.port)
                assert await reply(reader) == 220
                await command(reader, writer, "EHLO bench.invalid", 250)
            await command(reader, writer, f"MAIL FROM:<{a.sender}>", 250)
            await command(reader, writer, f"RCPT TO:<{a.recipient}>", 250)
            await command(reader, writer, "DATA", 354)
            writer.write(message(a.size, a.sender, a.recipient, self.left))
            await writer.drain()
            started = time.perf_counter()
            code = await reply(reader)
            self.latencies.append(time.perf_counter() - started)
            if code != 250:
                self.refused += 1
            if not a.reuse:
                await command(reader, writer, "QUIT", 221)
                writer.close()
                await writer.wait_closed()
                writer = None
        if writer is not None:
            await command(reader, writer, "QUIT", 221)
            writer.close()

    async def run(self) -> str:
        self.started = time.perf_counter()
        await asyncio.gather(*(self.session() for _ in range(self.args.sessions)))
        wall = time.perf_counter() - self.started
        ms = sorted(1000 * x for x in self.latencies)
        p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))]
        accepted = len(ms) - self.refused
        return (f"accepted={accepted} refused={self.refused} wall={wall:.2f}s rate={accepted / wall:.0f}/s "
                f"p50={statistics.median(ms):.1f}ms p99={p99:.1f}ms max={ms[-1]:.1f}ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1", "::1", "localhost"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--reuse", action="store_true", help="keep the connection for the next message")
    parser.add_argument("--rate", type=float, default=0.0, help="pace to this many messages/s (0: as fast as accepted)")
    parser.add_argument("--sender", default="bench@example.org")
    parser.add_argument("--recipient", default="max.mustermann@school.test")
    print(asyncio.run(Load(parser.parse_args()).run()))


if __name__ == "__main__":
    main()
