"""Decision record 0001: the same events through our stage runner and through a faust-streaming agent.

Prerequisites: `.venv` (make venv), a Kafka broker (default 127.0.0.1:19092, `--bootstrap` otherwise),
`python3 -m venv` and PyPI access for the first run: the script creates var/bench/faust-venv and
installs bench/requirements-faust.txt there (faust never enters .venv).

    .venv/bin/python bench/faust_vs_aiokafka.py [--events 100000] [--guarantee exactly_once]

Both sides read the same pre-produced `<prefix>.received` topic (N `received` events, 4 partitions),
each with its own consumer group, one after the other, and are timed the same way (runner_noop.py's
`measure`): from the first record on the output topic until the group has committed all N input
offsets, with the CPU of the process under test read from /proc.

(a) `pipeline.runner.StageRunner` with a no-op stage: one transaction per batch of 200, read_committed.
(b) bench/faust_noop_app.py: an agent that forwards each record to `<prefix>.faust-<guarantee>.out`,
    once with processing_guarantee="exactly_once" and once with "at_least_once" (--guarantee picks
    one); a run that fails is reported with the end of its log.

After each run a read_committed consumer counts the output topic and compares it with the topic's end
offsets: offsets without a visible record are transaction markers, so this shows whether the outputs
were written inside transactions. (With faust-streaming 0.15.3 they are not, even with exactly_once:
the agent's `topic.send` picks its transactional producer from the consumer's metadata for the
*output* partition, which has no entry for a topic the app does not consume, so it falls back to the
plain producer; only the input offsets are committed through transactions. See faust-streaming/faust
#177 and docs/decisions/0001-stage-runtime.md.)
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402

import runner_noop as noop  # noqa: E402

VENV = REPO / "var/bench/faust-venv"


def faust_python() -> Path:
    python = VENV / "bin/python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(BENCH / "requirements-faust.txt")],
                       check=True)
    return python


async def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="bench-admin")
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()


async def measure_faust(bootstrap: str, prefix: str, n: int, partitions: int, guarantee: str) -> noop.Figures:
    python = faust_python()
    group, output = f"{prefix}.faust-{guarantee}", f"{prefix}.faust-{guarantee}.out"
    await create_topic(bootstrap, output, partitions)
    env = {**os.environ, "BENCH_BOOTSTRAP": bootstrap, "BENCH_INPUT": f"{prefix}.received",
           "BENCH_OUTPUT": output, "BENCH_GROUP": group, "BENCH_GUARANTEE": guarantee,
           "BENCH_PARTITIONS": str(partitions), "BENCH_DATADIR": str(REPO / "var/bench" / group)}
    argv = [str(python), str(BENCH / "faust_noop_app.py"), "worker", "-l", "warn"]
    try:
        figures, _ = await noop.measure(f"faust-streaming agent, processing_guarantee={guarantee}", argv, bootstrap,
                                        group, output, partitions, n, env=env, timeout=300)
    finally:
        shutil.rmtree(env["BENCH_DATADIR"], ignore_errors=True)
    figures.note = noop.check_line(output, *await noop.count_committed(bootstrap, output, n))
    return figures


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--bootstrap", default="127.0.0.1:19092")
    parser.add_argument("--guarantee", action="append", choices=["exactly_once", "at_least_once"],
                        help="faust processing_guarantee to measure (repeatable; default: both)")
    parser.add_argument("--keep", action="store_true", help="do not delete the topics")
    args = parser.parse_args()
    args.guarantee = args.guarantee or ["exactly_once", "at_least_once"]
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    faust_python()  # install first, so pip does not run during a measurement
    prefix = f"bench{secrets.token_hex(4)}"
    settings = noop.make_settings(args.bootstrap, prefix)
    await noop.ensure_topics(settings)
    partitions = settings.kafka.partitions
    try:
        t = time.monotonic()
        await noop.produce_received(settings, args.events)
        print(f"pre-produced {args.events} received events to {prefix}.received ({partitions} partitions) "
              f"in {time.monotonic() - t:.1f}s; {noop.CORES} cores (broker on the same machine), load average "
              f"{os.getloadavg()[0]:.2f}\n")
        ours = await noop.measure_runner(args.bootstrap, prefix, args.events)
        output = noop.Topics.from_settings(settings).checked(noop.STAGE)
        print(ours.report() + "\n  " + noop.check_line(output, *await noop.count_committed(args.bootstrap, output,
                                                                                          args.events)) + "\n")
        for guarantee in args.guarantee:
            try:
                theirs = await measure_faust(args.bootstrap, prefix, args.events, partitions, guarantee)
            except (RuntimeError, TimeoutError) as exc:
                log = REPO / "var/bench/logs" / f"{prefix}.faust-{guarantee}.log"
                print(f"faust with processing_guarantee={guarantee} FAILED: {exc}\n  last lines of {log}:")
                print("\n".join("    " + line for line in log.read_text().splitlines()[-15:]) + "\n")
                continue
            print(theirs.report())
            print(f"  ratio runner/faust: {ours.steady_rate / theirs.steady_rate:.2f}x events/s, "
                  f"{ours.per_cpu_second / theirs.per_cpu_second:.2f}x events per CPU-second\n")
    finally:
        if not args.keep:
            await noop.delete_topics(args.bootstrap, prefix)


if __name__ == "__main__":
    asyncio.run(main())
