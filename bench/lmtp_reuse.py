"""LMTP delivery into the stack's Dovecot with and without connection reuse: CPU per message on both ends.

Run by bench/lmtp_reuse.sh, which starts the bench stack's daemons (Dovecot among them) and passes
their LMTP port and Dovecot's master pid. Delivers MESSAGES messages of about 4 KiB to one mailbox
through `consumers.sinks.transport.SmtpClientTransport` (the LMTP sink's transport), 16 at a time
(the sink's `inflight`), alternating `reuse_seconds` = 0 (a connection per delivery, as before
2026-12-04) and 2 (the default: kept connections, Postfix's connection cache) ROUNDS times, and
prints per run: deliveries per second, this process's CPU per message (the client) and Dovecot's
(its master and every child, the reaped LMTP processes included).

    .venv/bin/python bench/lmtp_reuse.py PORT DOVECOT_PID [--messages 2000] [--rounds 3]
"""
from __future__ import annotations

import argparse
import asyncio
import os
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


def _cpu_of(pid: int) -> float:
    """utime + stime + the reaped children's, in seconds (0 for a process that is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _tree_cpu(root: int) -> float:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += _cpu_of(pid)
        todo.extend(children.get(pid, []))
    return total


async def _run(port: int, dovecot: int, messages: int, reuse: float) -> None:
    transport = SmtpClientTransport("127.0.0.1", port, lmtp=True, helo_name="mx.school.test", timeout=30.0,
                                    reuse_seconds=reuse)
    slots = asyncio.Semaphore(INFLIGHT)

    async def one() -> None:
        async with slots:
            replies = await transport.deliver(Delivery(mail_from="bench@bench.test", recipients=[RECIPIENT],
                                                       data=BODY))
            if replies[RECIPIENT].code != 250:
                raise SystemExit(f"Dovecot answered {replies[RECIPIENT]}")

    cpu0, dovecot0, wall0 = time.process_time(), _tree_cpu(dovecot), time.monotonic()
    await asyncio.gather(*(one() for _ in range(messages)))
    wall = time.monotonic() - wall0
    await transport.close()
    await asyncio.sleep(0.5)  # the LMTP processes end and are reaped
    client, server = time.process_time() - cpu0, _tree_cpu(dovecot) - dovecot0
    print(f"reuse_seconds={reuse:g}: {messages / wall:.0f} deliveries/s, client {1000 * client / messages:.2f} "
          f"CPU-ms per message, Dovecot {1000 * server / messages:.2f} CPU-ms per message", flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("dovecot_pid", type=int)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for _ in range(args.rounds):
        for reuse in (0.0, 2.0):
            await _run(args.port, args.dovecot_pid, args.messages, reuse)


if __name__ == "__main__":
    uvloop.install()
    asyncio.run(main())
