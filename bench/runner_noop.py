"""The stage runner's own overhead: a no-op stage behind `pipeline.runner.StageRunner`.

Prerequisites: `.venv` (make venv) and a Kafka broker; by default the scratch/developer broker at
127.0.0.1:19092 (`make run` starts one), else `--bootstrap HOST:PORT`. Only loopback addresses.

    .venv/bin/python bench/runner_noop.py [--events 100000] [--bootstrap 127.0.0.1:19092] [--batch-size 200]

What it does: creates the topics of a one-stage topology (`bench_noop`) under a fresh prefix
`bench<random>`, pre-produces N `received` events, then starts the runner in a child process and
times it until the group `<prefix>.bench_noop` has committed offsets for all N input records (the
runner commits input offsets and outputs in one transaction, so that is "all N stage_result outputs
are committed"). A read_committed consumer then counts the output topic as a check. The child
reports its own CPU time (`time.process_time()`, user+system of all its threads) from the `run()`
call until the parent stops it. The topics are deleted at the end (`--keep` keeps them).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient  # noqa: E402
from aiokafka.errors import GroupCoordinatorNotAvailableError  # noqa: E402

from pipeline import eventloop  # noqa: E402
from pipeline.bus import Topics, ensure_topics, make_producer  # noqa: E402
from pipeline.cli.components import load_builtins  # noqa: E402
from pipeline.config import load_settings  # noqa: E402
from pipeline.registry import register  # noqa: E402
from pipeline.settings import Settings  # noqa: E402
from pipeline.stage import Outcome, StageContext, Work  # noqa: E402
from schemas.events import BlobRef, Client, Envelope, HeaderSummary, Received, Verdict, encode_event  # noqa: E402
from schemas.ids import new_id  # noqa: E402

STAGE = "bench_noop"
CORES = os.cpu_count() or 1


@dataclass(frozen=True, slots=True)
class NoopSettings:
    pass


@register
class NoopStage:
    name = STAGE
    description = "Benchmark: passes every message, does nothing"
    Settings = NoopSettings

    def __init__(self, settings: NoopSettings, context: StageContext | None = None) -> None:
        pass

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def process(self, work: Work) -> Outcome:
        return Outcome(verdict=Verdict.PASS)


def make_settings(bootstrap: str, prefix: str, batch_size: int = 0) -> Settings:
    env = {
        "POSTSTELLE_KAFKA__BOOTSTRAP": bootstrap,
        "POSTSTELLE_KAFKA__TOPIC_PREFIX": prefix,
        "POSTSTELLE_TOPOLOGY__STAGES": STAGE,
        "POSTSTELLE_HOME": str(REPO / "var/bench"),
    }
    if batch_size:  # else the default runner.batch_size
        env["POSTSTELLE_RUNNER__BATCH_SIZE"] = str(batch_size)
    load_builtins()  # the built-in checks and stages the default config names
    return load_settings(None, environ=env, stage_types={STAGE: NoopSettings})


def sample_event(i: int) -> Received:
    """A `received` event shaped like the ingress writes it (one recipient, 4 KiB blob)."""
    mid = new_id()
    return Received(
        message_id=mid,
        envelope=Envelope(mail_from=f"sender{i}@example.org", rcpt_to=["max.mustermann@school.test"]),
        client=Client(ip="127.0.0.1", port=40000 + i % 20000, helo="client.example.org"),
        blob=BlobRef(sha256=secrets.token_hex(32), size=4096),
        headers=HeaderSummary(subject=f"bench {i}", header_from=f"sender{i}@example.org",
                              header_to="max.mustermann@school.test", message_id_header=f"<{mid}@example.org>"),
        session_id=new_id(),
        ingress_host="mx.school.test",
    )


async def produce_received(settings: Settings, n: int) -> None:
    producer = make_producer(settings.kafka, "bench-load")
    await producer.start()
    try:
        topic = Topics.from_settings(settings).received
        for start in range(0, n, 5000):
            futures = []
            for i in range(start, min(n, start + 5000)):
                event = sample_event(i)
                futures.append(await producer.send(topic, encode_event(event), key=event.message_id.encode()))
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def wait_committed(bootstrap: str, group: str, output_topic: str, partitions: int, n: int,
                         child: subprocess.Popen, timeout: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """Poll every 50 ms until `group` has committed `n` offsets.

    Returns (wall time, CPU seconds of `child`) when the output topic first grew and when the group had
    committed all `n`.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="bench-watch")
    end = AIOKafkaConsumer(bootstrap_servers=bootstrap, client_id="bench-watch-end")
    await admin.start()
    await end.start()
    tps = [TopicPartition(output_topic, p) for p in range(partitions)]
    first = None
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if child.poll() is not None:
                raise RuntimeError(f"{child.args[:3]} exited with status {child.returncode}")
            if first is None and sum((await end.end_offsets(tps)).values()) > 0:
                first = (time.time(), cpu_seconds(child.pid))
            try:
                offsets = await admin.list_consumer_group_offsets(group)
            except GroupCoordinatorNotAvailableError:  # a fresh broker makes its offsets topic first
                await asyncio.sleep(0.2)
                continue
            if sum(meta.offset for meta in offsets.values() if meta.offset > 0) >= n:
                done = (time.time(), cpu_seconds(child.pid))
                return first or done, done
            await asyncio.sleep(0.05)
        raise TimeoutError(f"group {group} did not commit {n} offsets in {timeout:.0f}s")
    finally:
        await end.stop()
        await admin.close()


async def count_committed(bootstrap: str, topic: str, expect: int, timeout: float = 120) -> tuple[int, int]:
    """(records a read_committed consumer sees on `topic`, sum of its end offsets).

    The difference is offsets that hold no visible record: transaction markers (and aborted records),
    so 0 means nothing on the topic was written in a transaction.
    """
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, isolation_level="read_committed",
                                auto_offset_reset="earliest", enable_auto_commit=False, group_id=None)
    await consumer.start()
    seen, deadline = 0, time.monotonic() + timeout
    try:
        while seen < expect and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10000)
            seen += sum(len(records) for records in batch.values())
        ends = await consumer.end_offsets(list(consumer.assignment()))
        return seen, sum(ends.values())
    finally:
        await consumer.stop()


def check_line(topic: str, seen: int, end: int) -> str:
    written = f"in transactions ({end - seen} offsets are markers)" if end > seen else "NOT in transactions (no markers)"
    return f"check: a read_committed consumer sees {seen} records on {topic}; written {written}"


async def delete_topics(bootstrap: str, prefix: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="bench-cleanup")
    await admin.start()
    try:
        mine = [t for t in await admin.list_topics() if t.startswith(prefix + ".")]
        if mine:
            await admin.delete_topics(mine)
    finally:
        await admin.close()


def cpu_seconds(pid: int) -> float:
    """user+system CPU of a process (what its own time.process_time() would say), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the runner under test, in its own process ------------------------------------------------

async def child_main(bootstrap: str, prefix: str, batch_size: int) -> None:
    from pipeline.runner import StageRunner

    settings = make_settings(bootstrap, prefix, batch_size)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    runner = StageRunner(settings, NoopStage(NoopSettings()))
    cpu0 = time.process_time()
    await runner.run(stop)
    print(f"child cpu={time.process_time() - cpu0:.3f} processed={runner.processed}", flush=True)


@dataclass
class Figures:
    name: str
    events: int
    start: float  # wall clock: process started
    first_output: float  # wall clock: the output topic first grew
    done: float  # wall clock: the group had committed every input offset
    cpu_steady: float  # CPU seconds of the process between first_output and done (/proc)
    cpu_total: float  # CPU seconds of the process from its start (imports included) to done
    note: str = ""

    @property
    def steady_rate(self) -> float:
        return self.events / (self.done - self.first_output)

    @property
    def per_cpu_second(self) -> float:
        return self.events / self.cpu_steady

    def report(self) -> str:
        total, steady = self.done - self.start, self.done - self.first_output
        return (f"{self.name}: {self.events} events\n"
                f"  {self.steady_rate:,.0f} events/s from the first output to the last commit ({steady:.1f}s); "
                f"{self.events / total:,.0f} events/s from process start ({total:.1f}s, start-up and group join "
                f"included)\n"
                f"  CPU of that process while processing: {self.cpu_steady:.1f}s = {1000 * self.cpu_steady / self.events:.3f} "
                f"CPU-s per 1000 events = {self.per_cpu_second:,.0f} events per CPU-second of one core "
                f"({self.cpu_total:.1f}s CPU from process start)\n"
                f"  (one process, single-threaded event loop; the machine has {CORES} cores, shared with the "
                f"broker and this watcher)" + (f"\n  {self.note}" if self.note else ""))


async def measure(name: str, argv: list[str], bootstrap: str, group: str, output_topic: str, partitions: int,
                  n: int, env: dict[str, str] | None = None, timeout: float = 900) -> tuple[Figures, str]:
    """Start `argv`, time it until `group` committed `n` offsets, SIGTERM it; the figures and its output.

    The child's stdout and stderr go to var/bench/logs/<group>.log (read back as the second result).
    """
    log_path = REPO / "var/bench/logs" / f"{group}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with log_path.open("w") as log_file:
        child = subprocess.Popen(argv, env=env, stdout=log_file, stderr=subprocess.STDOUT, text=True)
        try:
            (first, cpu_first), (done, cpu_done) = await wait_committed(bootstrap, group, output_topic, partitions,
                                                                        n, child, timeout)
        finally:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
    return Figures(name, n, started, first, done, cpu_done - cpu_first, cpu_done), log_path.read_text()


async def measure_runner(bootstrap: str, prefix: str, n: int, batch_size: int = 0) -> Figures:
    """The stage runner with the no-op stage on `<prefix>.received` (already filled with `n` events)."""
    settings = make_settings(bootstrap, prefix, batch_size)
    argv = [sys.executable, __file__, "--child", "--bootstrap", bootstrap, "--prefix", prefix,
            "--batch-size", str(settings.runner.batch_size)]
    name = f"stage runner, no-op stage (aiokafka, one transaction per batch of {settings.runner.batch_size})"
    figures, out = await measure(name, argv, bootstrap,
                                 f"{prefix}.{STAGE}", Topics.from_settings(settings).checked(STAGE),
                                 settings.kafka.partitions, n)
    line = next(line for line in out.splitlines() if line.startswith("child "))
    stats = dict(item.split("=") for item in line.split()[1:])
    figures.note = (f"the runner's own time.process_time() from run() to stop: {float(stats['cpu']):.1f}s "
                    f"= {1000 * float(stats['cpu']) / n:.3f} CPU-s per 1000 events")
    return figures


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--bootstrap", default="127.0.0.1:19092")
    parser.add_argument("--prefix", default="")
    parser.add_argument("--batch-size", type=int, default=0, help="runner.batch_size (default: the setting's)")
    parser.add_argument("--keep", action="store_true", help="do not delete the topics")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.getLogger("aiokafka").setLevel(logging.ERROR)  # leader elections right after topic creation
    if args.child:
        return await child_main(args.bootstrap, args.prefix, args.batch_size)
    prefix = args.prefix or f"bench{secrets.token_hex(4)}"
    settings = make_settings(args.bootstrap, prefix)
    await ensure_topics(settings)
    try:
        t = time.monotonic()
        await produce_received(settings, args.events)
        print(f"pre-produced {args.events} received events to {prefix}.received ({settings.kafka.partitions} "
              f"partitions) in {time.monotonic() - t:.1f}s; {CORES} cores, load average {os.getloadavg()[0]:.2f}")
        figures = await measure_runner(args.bootstrap, prefix, args.events, args.batch_size)
        print(figures.report())
        output = Topics.from_settings(settings).checked(STAGE)
        print("  " + check_line(output, *await count_committed(args.bootstrap, output, args.events)))
    finally:
        if not args.keep:
            await delete_topics(args.bootstrap, prefix)


if __name__ == "__main__":
    eventloop.run(main())  # uvloop, as the components run (POSTSTELLE_EVENT_LOOP=asyncio: the standard loop)
