"""Concurrent SMTP connections: how many one ingress process holds, its memory, and a normal client's 250.

Starts a private stack with Kafka, slapd, NSD and the ingress only (bench/pystack.py, ports from
`--base`), then opens "botnet" connections in steps of `--step` up to `--connections`, each bound to
its own loopback source address 127.0.<n>.<m> (`--per-ip` connections per address), so neither a
per-address limit nor the ephemeral ports of one address interfere. Half of them connect and idle
after the banner; the other half send EHLO and stall. Each passes the ingress's SMTP-time checks as
a stranger would: DNSBL and FCrDNS lookups in the local NSD (`checks.fcrdns.action = "note"` for
the bench, else an address without PTR gets 550 at connect and is not held: that is the ingress
doing its job, not holding connections).

After each step (every connection has its banner or its refusal):
- the ingress process's RSS (VmRSS from /proc/<pid>/status) and open descriptors;
- a normal client from 127.0.0.1 (allowlisted in deploy/local/poststelle.toml) sends one 4 KiB
  message over a fresh connection; its time from connect to the 250 after DATA, which must come
  within `--bound` seconds.
After the last step, connections are opened up to `ingress.max_connections` (`--connections` + 1 +
`--over`/2 by default) and `--over` beyond it: the answers are counted (beyond: `421 4.7.0`).
`ingress.stress_timeout` is off by default here (`--stress-timeout`), so idle connections are held
for the whole run; with it on, `--linger` shows how many the ingress shed meanwhile.

    .venv/bin/python bench/connections.py [--connections 5000] [--step 1000] [--per-ip 2] [--base 26110]

The client raises its own RLIMIT_NOFILE soft limit to the hard limit (it holds every socket too);
`poststelle up` starts with a soft limit of `--ingress-nofile` (1024, as under systemd), so the
ingress must raise its own (ingress.descriptors; its log line is printed).
"""
from __future__ import annotations

import argparse
import asyncio
import resource
import socket
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pystack import BenchStack  # noqa: E402
from smtp_latency import message, reply  # noqa: E402

SENDER, RECIPIENT = "bench@example.org", "max.mustermann@school.test"


def source_address(i: int, per_ip: int) -> str:
    """The loopback source address of botnet connection i: 127.0.<n>.<m>, avoiding the test zone's
    named hosts (127.0.0.x, 127.0.1.x, 127.0.2.x) and .0/.255."""
    k = i // per_ip
    return f"127.0.{10 + k // 250}.{1 + k % 250}"


class Botnet:
    """Connections that say nothing (or EHLO) and stay; their banners and closes are counted."""

    def __init__(self, port: int, per_ip: int) -> None:
        self.port = port
        self.per_ip = per_ip
        self.opened = 0
        self.answers: Counter[str] = Counter()  # first reply code: 220, 421, 450, 550 ... or "error"
        self.open_now = 0  # connections whose banner was 220 and which the server has not closed
        self.closed_by_server = 0
        self._tasks: set[asyncio.Task] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def open(self, count: int, parallel: int = 200) -> float:
        """Open `count` more connections (at most `parallel` handshakes at once); seconds it took."""
        started = time.perf_counter()
        gate = asyncio.Semaphore(parallel)
        greeted = [asyncio.get_running_loop().create_future() for _ in range(count)]
        for future in greeted:
            i, self.opened = self.opened, self.opened + 1
            await gate.acquire()
            future.add_done_callback(lambda _: gate.release())
            task = asyncio.create_task(self._connection(i, future))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await asyncio.gather(*greeted)
        return time.perf_counter() - started

    async def _connection(self, i: int, greeted: asyncio.Future) -> None:
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", self.port, local_addr=(source_address(i, self.per_ip), 0))
        except OSError as exc:
            self.answers[f"error {type(exc).__name__}"] += 1
            greeted.set_result(None)
            return
        held = False
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), 60)
            except TimeoutError:  # connected in the client's kernel, never accepted by the server
                line = b"timeout"
            code = "no banner in 60 s" if line == b"timeout" else line[:3].decode(errors="replace") or "closed"
            self.answers[code] += 1
            if code != "220":
                return
            held = True
            self.open_now += 1
            self._writers.append(writer)
            if i % 2:  # half of them say EHLO, then stall
                writer.write(f"EHLO bot{i}.invalid\r\n".encode())
                await reply(reader)
            greeted.set_result(None)
            await reader.read()  # b"" when the server closes (idle timeout), else forever
            self.closed_by_server += 1
        except (OSError, ConnectionError):
            self.closed_by_server += held
        finally:
            if not greeted.done():
                greeted.set_result(None)
            if held:
                self.open_now -= 1
            writer.close()

    def close(self) -> None:
        for writer in self._writers:
            writer.close()
        for task in self._tasks:
            task.cancel()


async def normal_client(port: int, bound: float) -> tuple[int, float]:
    """One message from 127.0.0.1 over a new connection: (reply code after DATA, seconds from connect)."""
    started = time.perf_counter()
    async with asyncio.timeout(bound):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for line, expect in ((None, 220), ("EHLO client.example.org", 250), (f"MAIL FROM:<{SENDER}>", 250),
                                 (f"RCPT TO:<{RECIPIENT}>", 250), ("DATA", 354)):
                if line:
                    writer.write(line.encode() + b"\r\n")
                code = await reply(reader)
                if code != expect:
                    return code, time.perf_counter() - started
            writer.write(message(4096, SENDER, RECIPIENT, 0))
            code = await reply(reader)
            elapsed = time.perf_counter() - started
            writer.write(b"QUIT\r\n")
            return code, elapsed
        finally:
            writer.close()


def process_memory(pid: int) -> tuple[float, int]:
    """(VmRSS in MiB, open descriptors) of process `pid`."""
    rss_kib = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if line.startswith("VmRSS:"))
    return rss_kib / 1024, len(list(Path(f"/proc/{pid}/fd").iterdir()))


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def run(args: argparse.Namespace, port: int, pid: int) -> None:
    botnet = Botnet(port, args.per_ip)
    rss0, fds0 = process_memory(pid)
    code, latency = await normal_client(port, args.bound)
    print(f"{'held':>6} {'opened':>6} {'refused':>7} {'RSS MiB':>8} {'fds':>6} {'KiB/conn':>8} "
          f"{'open s':>6} {'normal client':>16}")
    print(f"{0:>6} {0:>6} {0:>7} {rss0:>8.1f} {fds0:>6} {'':>8} {'':>6} {code} in {1000 * latency:>6.1f} ms")
    failures = 0
    while botnet.opened < args.connections:
        took = await botnet.open(min(args.step, args.connections - botnet.opened), args.parallel)
        await asyncio.sleep(1.0)  # let the ingress settle (session events, DNS answers)
        rss, fds = process_memory(pid)
        try:
            code, latency = await normal_client(port, args.bound)
            result = f"{code} in {1000 * latency:>6.1f} ms"
        except TimeoutError:
            code, result = 0, f"no 250 within {args.bound:g} s"
        failures += code != 250
        per_conn = 1024 * (rss - rss0) / max(1, botnet.open_now)
        refused = botnet.opened - botnet.answers["220"]
        print(f"{botnet.open_now:>6} {botnet.opened:>6} {refused:>7} {rss:>8.1f} {fds:>6} {per_conn:>8.1f} "
              f"{took:>6.1f} {result}", flush=True)
    if args.over:
        room = max(0, args.max - botnet.open_now)
        before = Counter(botnet.answers)
        await botnet.open(room + args.over, args.parallel)
        extra = botnet.answers - before
        print(f"{room} + {args.over} more connections with {botnet.open_now - extra['220']} held "
              f"(max_connections={args.max}): " + ", ".join(f"{n} x {k}" for k, n in sorted(extra.items())))
    if args.linger:
        held = botnet.open_now
        await asyncio.sleep(args.linger)
        print(f"after {args.linger:g}s more: {botnet.open_now} of {held} still held")
    print(f"first replies of all botnet connections: {dict(sorted(botnet.answers.items()))}; "
          f"closed by the server meanwhile: {botnet.closed_by_server}")
    print(f"normal client: {'every' if not failures else f'{failures} steps without a'} 250 within {args.bound:g} s")
    botnet.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--step", type=int, default=1000)
    parser.add_argument("--per-ip", type=int, default=2, help="botnet connections per source address")
    parser.add_argument("--parallel", type=int, default=200, help="connection handshakes in flight at once")
    parser.add_argument("--over", type=int, default=100, help="connections opened beyond max_connections at the end")
    parser.add_argument("--max", type=int, default=0, help="ingress.max_connections (default: connections+1+over/2)")
    parser.add_argument("--stress-timeout", type=float, default=0.0,
                        help="ingress.stress_timeout (default 0: off, so idle connections are held, not shed)")
    parser.add_argument("--linger", type=float, default=0.0, help="seconds to wait at the end, then count the held")
    parser.add_argument("--ingress-nofile", type=int, default=1024,
                        help="soft RLIMIT_NOFILE `poststelle up` starts with (a service manager's usual 1024)")
    parser.add_argument("--bound", type=float, default=5.0, help="seconds the normal client may wait for its 250")
    parser.add_argument("--base", type=int, default=26110, help="first port of the private stack (see bench/pystack.py)")
    args = parser.parse_args()
    args.max = args.max or args.connections + 1 + args.over // 2
    nofile = raise_nofile()
    if nofile < args.connections + args.over + 100:
        sys.exit(f"RLIMIT_NOFILE hard limit {nofile} is below the {args.connections + args.over + 100} sockets needed")
    extra = {
        "POSTSTELLE_INGRESS__MAX_CONNECTIONS": str(args.max),
        "POSTSTELLE_INGRESS__MAX_CONNECTIONS_PER_IP": str(max(10, args.per_ip)),
        "POSTSTELLE_INGRESS__STRESS_TIMEOUT": str(args.stress_timeout),
        "POSTSTELLE_CHECKS__FCRDNS__ACTION": "note",  # else every address without PTR gets 550 at connect
    }
    print(f"bench/connections.py {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}: up to {args.connections} "
          f"connections, {args.per_ip} per source address, steps of {args.step}; max_connections={args.max}, "
          f"stress_timeout={args.stress_timeout:g}; "
          f"client RLIMIT_NOFILE {nofile}; {socket.gethostname()}, load average "
          f"{' '.join(f'{x:.2f}' for x in __import__('os').getloadavg())}")
    with BenchStack(args.base, "ingress", extra, nofile_soft=args.ingress_nofile) as stack:
        pid = stack.pid("ingress")
        for line in (stack.home / "log/ingress.log").read_text().splitlines():
            if "descriptor" in line or "RLIMIT" in line:
                print("ingress: " + line.split("] ", 1)[-1])
        asyncio.run(run(args, stack.smtp_port, pid))


if __name__ == "__main__":
    main()
