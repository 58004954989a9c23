"""Scale-out of a CPU-bound stage: 1 process vs 2 on 4 partitions, and a kill -9 of one of two.

Prerequisites: `.venv` and the Kafka jars (var/kafka/lib). Starts its own broker (bench/pystack.py,
Kafka only, ports from `--base`), or uses `--bootstrap HOST:PORT`.

    .venv/bin/python bench/scaleout.py [--events 20000] [--base 26130] [--bootstrap HOST:PORT]

The stage is bench/cpu_stage.py (`bench_cpu`: ~2 ms of SHA-256 per message, no sleep, no I/O),
loaded as a site's own stage through `topology.stage_modules`. Each run uses a fresh topic prefix
(`kafka.partitions` = 4 by default), pre-produces N `received` events (bench/runner_noop.py's
events), then starts `poststelle run stage:bench_cpu` processes (POSTSTELLE_INSTANCE 0 and 1: their
own transactional ids) and times them from the moment every process holds its partitions (the group
is stable with that many members; before, the first to join held all 4) to the group's commit of
all N input offsets (the runner commits outputs and input offsets in one transaction); the rate is
the input committed in that time over that time:

1. one process;  2. two processes: events/s each and the ratio;
3. two processes, one killed with SIGKILL once a third of the input is committed: the time until
   the survivor holds every partition (the group, read with the admin client, has one member
   assigned all 4 partitions) next to the consumer session timeout, then a read_committed count of
   the output topic by message id: every input exactly once (missing and duplicated are printed).

Machine CPU (all cores, /proc/stat) and the broker's CPU share are printed per run: with 2 cores
the broker and the watcher take part of the second core, which bounds the ratio.
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
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient  # noqa: E402
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment  # noqa: E402
from aiokafka.errors import KafkaError  # noqa: E402

import cpu_stage  # noqa: E402
from pipeline.bus import Topics, ensure_topics  # noqa: E402
from pipeline.cli.components import load_config  # noqa: E402
from pipeline.settings import Settings  # noqa: E402
from pystack import BenchStack  # noqa: E402
from runner_noop import cpu_seconds, delete_topics, produce_received  # noqa: E402
from schemas.events import decode_event  # noqa: E402

STAGE = cpu_stage.STAGE
SESSION_TIMEOUT_MS = 10_000  # aiokafka's default; pipeline.bus.make_consumer does not set it


def stage_env(bootstrap: str, prefix: str) -> dict[str, str]:
    return {
        "POSTSTELLE_CONFIG": str(REPO / "deploy/local/poststelle.toml"),
        "POSTSTELLE_KAFKA__BOOTSTRAP": bootstrap,
        "POSTSTELLE_KAFKA__TOPIC_PREFIX": prefix,
        "POSTSTELLE_TOPOLOGY__STAGE_MODULES": "cpu_stage",
        "POSTSTELLE_TOPOLOGY__STAGES": STAGE,
        "POSTSTELLE_TOPOLOGY__CHAINS": "[]",  # the local config chains its own stages
        "POSTSTELLE_HOME": str(REPO / f"var/bench/scaleout-{prefix}"),
    }


def settings_for(bootstrap: str, prefix: str) -> Settings:
    return load_config(None, environ=stage_env(bootstrap, prefix))  # imports cpu_stage (on sys.path)


def busy_seconds() -> tuple[float, float]:
    """(busy CPU seconds of all cores, wall seconds) since boot, from /proc/stat and /proc/uptime."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    hz = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq + steal) / hz, float(Path("/proc/uptime").read_text().split()[0])


class Group:
    """The stage's consumer group as the broker sees it: committed offsets, members and assignments."""

    def __init__(self, bootstrap: str, group_id: str) -> None:
        self.group_id = group_id
        self.admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="bench-scaleout")

    async def __aenter__(self) -> Group:
        await self.admin.start()
        return self

    async def __aexit__(self, *_) -> None:
        await self.admin.close()

    async def committed(self) -> int:
        try:
            offsets = await self.admin.list_consumer_group_offsets(self.group_id)
        except KafkaError:  # a fresh broker: the group coordinator (__consumer_offsets) is not there yet
            return 0
        return sum(meta.offset for meta in offsets.values() if meta.offset > 0)

    async def assignment(self) -> tuple[str, dict[str, list[int]]]:
        """(group state, {member id: partitions assigned}) of the group."""
        try:
            response = (await self.admin.describe_consumer_groups([self.group_id]))[0]
        except KafkaError as exc:
            return f"unknown ({type(exc).__name__})", {}
        _error, _group, state, _ptype, _protocol, members, *_ = response.groups[0]
        assigned = {}
        for member_id, _client_id, _host, _meta, raw in members:  # every process has the same client id
            parts = ConsumerProtocolMemberAssignment.decode(raw).assignment if raw else []
            assigned[member_id] = sorted(p for _topic, ps in parts for p in ps)
        return state, assigned


@dataclass
class Run:
    name: str
    events: int  # input records committed in the measured time
    start: float = 0.0  # wall clock: every process held its partitions (steady state)
    done: float = 0.0
    cpu_processes: float = 0.0  # CPU seconds of the stage processes between first output and done
    cpu_each: list[float] = field(default_factory=list)  # the same, per process
    machine_busy: float = 0.0  # busy CPU seconds of the whole machine in that time
    broker_cpu: float = 0.0
    bench_cpu: float = 0.0  # this script's own CPU (producing, watching)
    note: str = ""

    @property
    def rate(self) -> float:
        return self.events / (self.done - self.start)

    def report(self) -> str:
        wall = self.done - self.start
        others = self.machine_busy - self.cpu_processes - self.broker_cpu - self.bench_cpu
        return (f"{self.name}: {self.rate:,.0f} events/s ({self.events} events in {wall:.1f}s from the moment every "
                f"process held its partitions to the last commit); stage processes {self.cpu_processes:.1f} CPU-s "
                f"({' + '.join(f'{c:.1f}' for c in self.cpu_each)}) "
                f"({1000 * self.cpu_processes / self.events:.2f} ms/event), machine {self.machine_busy / wall:.2f} of "
                f"{os.cpu_count()} cores busy: stage {self.cpu_processes / wall:.2f}, broker {self.broker_cpu / wall:.2f}, "
                f"this watcher {self.bench_cpu / wall:.2f}, everything else on the machine {others / wall:.2f}" +
                (f"\n  {self.note}" if self.note else ""))


def start_stage(bootstrap: str, prefix: str, instance: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTSTELLE_")}
    env.update(stage_env(bootstrap, prefix))
    env["POSTSTELLE_INSTANCE"] = str(instance)
    env["PYTHONPATH"] = os.pathsep.join([str(BENCH), str(REPO)])
    log = (REPO / f"var/bench/logs/scaleout-{prefix}-{instance}.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        return subprocess.Popen([str(REPO / ".venv/bin/poststelle"), "run", f"stage:{STAGE}"], env=env, stdout=out,
                                stderr=subprocess.STDOUT)


def stop(children: list[subprocess.Popen]) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


async def output_ids(bootstrap: str, topic: str, expect: int, timeout: float) -> Counter[str]:
    """Message ids of the records a read_committed consumer sees on `topic` (waits up to `timeout` for `expect`)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, isolation_level="read_committed",
                                auto_offset_reset="earliest", enable_auto_commit=False, group_id=None)
    await consumer.start()
    seen: Counter[str] = Counter()
    deadline = time.monotonic() + timeout
    try:
        while sum(seen.values()) < expect and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10000)
            for records in batch.values():
                for record in records:
                    seen[decode_event(record.value).message_id] += 1
        return seen
    finally:
        await consumer.stop()


async def input_ids(bootstrap: str, topic: str, expect: int) -> set[str]:
    return set(await output_ids(bootstrap, topic, expect, 120))


async def one_run(args, broker_pid: int | None, processes: int, kill_at: float = 0.0) -> tuple[Run, str]:
    prefix = f"scale{secrets.token_hex(3)}"
    settings = settings_for(args.bootstrap, prefix)
    topics = Topics.from_settings(settings)
    await ensure_topics(settings)
    await topic_ready(args.bootstrap, topics.received, settings.kafka.partitions)
    await produce_received(settings, args.events)
    run = Run(f"{processes} process{'es' if processes > 1 else ''}", args.events)
    group_id = f"{prefix}.{STAGE}"
    children = [start_stage(args.bootstrap, prefix, i) for i in range(processes)]
    notes = []
    try:
        async with Group(args.bootstrap, group_id) as group:
            machine0 = broker0 = own0 = 0.0
            cpu0 = [0.0] * len(children)
            committed0 = 0
            killed_at = None
            deadline = time.monotonic() + args.timeout
            while time.monotonic() < deadline:
                alive = [c for c in children if c.poll() is None]
                if len(alive) < len(children) - (killed_at is not None):
                    raise RuntimeError(f"a stage process exited; see var/bench/logs/scaleout-{prefix}-*.log")
                if not run.start and await all_assigned(group, processes, settings.kafka.partitions):
                    # steady state: every process holds its partitions (the first to join held all 4
                    # until the others joined; that start-up skew is left out)
                    run.start = time.time()
                    committed0 = await group.committed()
                    cpu0 = [cpu_seconds(c.pid) for c in children]
                    machine0 = busy_seconds()[0]
                    broker0 = cpu_seconds(broker_pid) if broker_pid else 0.0
                    own0 = time.process_time()
                    run.events = args.events - committed0
                committed = await group.committed()
                if kill_at and killed_at is None and committed >= kill_at * args.events:
                    victim = children[1]
                    victim_cpu = cpu_seconds(victim.pid)
                    victim.send_signal(signal.SIGKILL)
                    victim.wait()
                    killed_at = time.monotonic()
                    stall = asyncio.create_task(read_committed_stall(args.bootstrap, topics.checked(STAGE),
                                                                     settings.kafka.partitions, args.timeout))
                    notes.append(f"killed instance 1 (SIGKILL) at {committed} of {args.events} committed")
                    taken = await survivor_takes_over(group, settings.kafka.partitions, args.timeout)
                    notes.append(f"the survivor held all {settings.kafka.partitions} partitions "
                                 f"{taken - killed_at:.1f}s after the kill (consumer session timeout "
                                 f"{SESSION_TIMEOUT_MS / 1000:g}s, heartbeat 3s: aiokafka's defaults)")
                if committed >= args.events:
                    run.done = time.time()
                    ends = [victim_cpu if killed_at is not None and c is children[1] else cpu_seconds(c.pid)
                            for c in children]
                    run.cpu_each = [end - start for end, start in zip(ends, cpu0)]
                    run.cpu_processes = sum(run.cpu_each)
                    run.machine_busy = busy_seconds()[0] - machine0
                    run.broker_cpu = (cpu_seconds(broker_pid) - broker0) if broker_pid else 0.0
                    run.bench_cpu = time.process_time() - own0
                    break
                await asyncio.sleep(0.05)
            else:
                raise TimeoutError(f"group {group_id} did not commit {args.events} offsets in {args.timeout:.0f}s")
    finally:
        stop(children)
    if kill_at:
        started = time.monotonic()
        seen = await output_ids(args.bootstrap, topics.checked(STAGE), args.events, args.timeout)
        waited = time.monotonic() - started
        stalled = await stall
        sent = await input_ids(args.bootstrap, topics.received, args.events)
        missing = len(sent - set(seen))
        duplicated = sum(n - 1 for n in seen.values() if n > 1)
        notes.append(f"exactly once: {len(sent)} inputs, {sum(seen.values())} outputs read_committed "
                     f"(in {waited:.1f}s), {missing} missing, {duplicated} duplicated, "
                     f"{len(set(seen) - sent)} unknown")
        notes.append(f"read_committed readers of the output could read past what was written at the kill "
                     f"{stalled:.1f}s after it (a transaction the victim left open holds them back until the "
                     f"broker aborts it: the transaction timeout, aiokafka's default 60s)")
    run.note = "\n  ".join(notes)
    return run, prefix


async def topic_ready(bootstrap: str, topic: str, partitions: int, timeout: float = 60) -> None:
    """Wait until the broker's metadata lists every partition of a topic just created (a busy fresh
    broker takes a while; a producer gives up on an unknown topic sooner)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        while len(consumer.partitions_for_topic(topic) or ()) < partitions:
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {topic} has no {partitions} partitions after {timeout:g}s")
            await consumer._client.force_metadata_update()
            await asyncio.sleep(0.2)
    finally:
        await consumer.stop()


async def read_committed_stall(bootstrap: str, topic: str, partitions: int, timeout: float) -> float:
    """Seconds until a read_committed reader of `topic` can read past everything written up to now.

    Called at the kill: the high watermark of each partition then includes whatever the victim's
    open transaction wrote; the last stable offset (what read_committed readers get up to) passes it
    once that transaction is aborted (or committed, had it got that far).
    """
    started = time.monotonic()
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    uncommitted = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_uncommitted")
    committed = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    await uncommitted.start()
    await committed.start()
    try:
        written = await uncommitted.end_offsets(tps)
        while time.monotonic() - started < timeout:
            stable = await committed.end_offsets(tps)
            if all(stable[tp] >= written[tp] for tp in tps):
                return time.monotonic() - started
            await asyncio.sleep(0.1)
        return float("inf")
    finally:
        await uncommitted.stop()
        await committed.stop()


async def all_assigned(group: Group, processes: int, partitions: int) -> bool:
    """True when the group is stable with `processes` members holding all `partitions` between them."""
    state, assigned = await group.assignment()
    return (state == "Stable" and len(assigned) == processes and all(assigned.values())
            and sum(len(p) for p in assigned.values()) == partitions)


async def survivor_takes_over(group: Group, partitions: int, timeout: float) -> float:
    """Poll the group every 100 ms until one member holds every partition; the monotonic time then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state, assigned = await group.assignment()
        if state == "Stable" and len(assigned) == 1 and len(next(iter(assigned.values()))) == partitions:
            return time.monotonic()
        await asyncio.sleep(0.1)
    raise TimeoutError("the survivor was not assigned every partition")


async def main_async(args, broker_pid: int | None) -> None:
    prefixes = []
    try:
        one, p = await one_run(args, broker_pid, 1)
        prefixes.append(p)
        print(one.report(), flush=True)
        two, p = await one_run(args, broker_pid, 2)
        prefixes.append(p)
        print(two.report(), flush=True)
        print(f"ratio 2 processes / 1 process: {two.rate / one.rate:.2f}x (wall clock, events/s)", flush=True)
        # what the ratio would be if each process had a core of its own: the work of one process
        # against the larger share of the two (how evenly the 4 partitions spread the CPU)
        one_ms, busier_ms = (1000 * one.cpu_processes / one.events, 1000 * max(two.cpu_each) / two.events)
        print(f"ratio by CPU (each process on a core of its own): {one_ms / busier_ms:.2f}x (1 process: "
              f"{one_ms:.2f} CPU-ms per event; 2 processes: the busier one {busier_ms:.2f} CPU-ms per event of "
              f"the total)", flush=True)
        killed, p = await one_run(args, broker_pid, 2, kill_at=1 / 3)
        prefixes.append(p)
        print(killed.report().replace("2 processes", "2 processes, one killed", 1), flush=True)
    finally:
        if not args.keep:
            for prefix in prefixes:
                await delete_topics(args.bootstrap, prefix)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--base", type=int, default=26130, help="first port of the private broker (bench/pystack.py)")
    parser.add_argument("--bootstrap", default="", help="use this broker instead of starting one")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--keep", action="store_true", help="do not delete the topics")
    args = parser.parse_args()
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # "topic not found" while topics are created
    print(f"bench/scaleout.py {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}: {args.events} events, stage "
          f"{STAGE} ({cpu_stage.CpuSettings().work_bytes} bytes x {cpu_stage.CpuSettings().rounds} SHA-256 rounds); "
          f"{os.cpu_count()} cores, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    if args.bootstrap:
        asyncio.run(main_async(args, None))
        return
    with BenchStack(args.base, "kafka") as stack:
        args.bootstrap = stack.bootstrap
        asyncio.run(main_async(args, stack.pid("kafka")))


if __name__ == "__main__":
    main()
