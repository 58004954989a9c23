"""LMTP delivery into the stack's Dovecot, one run with one `reuse_seconds`: the client's side.

Run by bench/lmtp_reuse.sh, which starts the bench stack's daemons (Dovecot among them), alternates
`reuse_seconds` = 0 (a connection per delivery, as before 2026-12-04) and 2 (the default: kept
connections, Postfix's connection cache), and adds Dovecot's CPU per message (`tree_cpu` of
bench/stack.sh). Delivers MESSAGES messages of about 4 KiB to one mailbox through
`consumers.sinks.transport.SmtpClientTransport` (the LMTP sink's transport), 16 at a time (the sink's
`inflight`), and prints deliveries per second and this process's CPU per message.

    .venv/bin/python bench/lmtp_reuse.py PORT REUSE_SECONDS [--messages 2000]
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import uvloop  # noqa: E402

from consumers.sinks.transport import Delivery, SmtpClientTransport  # noqa: E402

RECIPIENT = "max.mustermann@school.test"
BODY = (b"From: bench@bench.test\r\nTo: max.mustermann@school.test\r\nSubject: lmtp reuse\r\n\r\n"
        + (b"y" * 76 + b"\r\n") * 52)
INFLIGHT = 16


async def _run(port: int, messages: int, reuse: float) -> None:
    transport = SmtpClientTransport("127.0.0.1", port, lmtp=True, helo_name="mx.school.test", timeout=30.0,
                                    reuse_seconds=reuse)
    slots = asyncio.Semaphore(INFLIGHT)

    async def one() -> None:
        async with slots:
            replies = await transport.deliver(Delivery(mail_from="bench@bench.test", recipients=[RECIPIENT],
                                                       data=BODY))
            if replies[RECIPIENT].code != 250:
                raise SystemExit(f"Dovecot answered {replies[RECIPIENT]}")

    cpu0, wall0 = time.process_time(), time.monotonic()
    await asyncio.gather(*(one() for _ in range(messages)))
    wall = time.monotonic() - wall0
    await transport.close()
    client = time.process_time() - cpu0
    print(f"reuse_seconds={reuse:g}: {messages / wall:.0f} deliveries/s, client {1000 * client / messages:.2f} "
          "CPU-ms per message", flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("reuse_seconds", type=float)
    parser.add_argument("--messages", type=int, default=2000)
    args = parser.parse_args()
    await _run(args.port, args.messages, args.reuse_seconds)


if __name__ == "__main__":
    uvloop.install()
    asyncio.run(main())
