"""aiokafka against confluent-kafka (librdkafka) for the hop every stage makes: read_committed
consume -> transactional produce with the input offsets, in batches.

Prerequisites: `.venv`, the Kafka jars (var/kafka/lib), and `confluent-kafka` in the venv for its
half (`.venv/bin/pip install confluent-kafka`; it is no dependency of poststelle: this bench decides
whether it should become one, docs/decisions/0007-kafka-client.md). Starts its own broker
(bench/pystack.py, Kafka only, ports from `--base`) unless `--bootstrap HOST:PORT` is given.

    .venv/bin/python bench/kafka_clients.py [--records 100000] [--batch 200] [--size 1500] [--base 26150]

Each client runs in a child process of its own on the same pre-produced input topic (4 partitions,
N records of SIZE bytes, keyed like events) with its own consumer group: poll up to BATCH records,
begin a transaction, produce each record to an output topic, add the consumed offsets, commit; until
N records are committed. Both clients get the same settings where they have them (acks=all,
idempotence, read_committed, a long linger so a batch leaves in one request at its commit;
`--linger-ms` changes it for both; librdkafka's `retry.backoff.ms` is 10, as its default of 100 ms
after the broker's CONCURRENT_TRANSACTIONS made small batches wait for it). Printed
per client: records/s (wall) and the child's CPU (time.process_time(): every thread, librdkafka's
included) per 1000 records. Nothing is done with the records: this is the client's share of the
stage runner, not a stage.
"""
from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

PARTITIONS = 4


def _topics(prefix: str) -> tuple[str, str]:
    return f"{prefix}.in", f"{prefix}.out"


async def _aiokafka_hop(bootstrap: str, prefix: str, client: str, records: int, batch: int, linger: int) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    source, sink = _topics(prefix)
    out = f"{sink}.{client}"
    consumer = AIOKafkaConsumer(source, bootstrap_servers=bootstrap, group_id=f"{prefix}.{client}",
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                isolation_level="read_committed")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                                transactional_id=f"{prefix}.{client}.0", linger_ms=linger)
    await consumer.start()
    await producer.start()
    done = 0
    started = None
    try:
        while done < records:
            polled = await consumer.getmany(timeout_ms=1000, max_records=batch)
            if not polled:
                continue
            started = started or (time.monotonic(), time.process_time())
            async with producer.transaction():
                for tp, msgs in polled.items():
                    for msg in msgs:
                        await producer.send(out, msg.value, key=msg.key)
                offsets = {tp: msgs[-1].offset + 1 for tp, msgs in polled.items()}
                await producer.send_offsets_to_transaction(offsets, f"{prefix}.{client}")
            done += sum(len(m) for m in polled.values())
        wall, cpu = time.monotonic() - started[0], time.process_time() - started[1]
    finally:
        await producer.stop()
        await consumer.stop()
    print(f"{done} {wall} {cpu}")


def _confluent_hop(bootstrap: str, prefix: str, client: str, records: int, batch: int, linger: int) -> None:
    from confluent_kafka import Consumer, Producer

    source, sink = _topics(prefix)
    out = f"{sink}.{client}"
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{prefix}.{client}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "isolation.level": "read_committed"})
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                         "transactional.id": f"{prefix}.{client}.0", "linger.ms": linger,
                         "retry.backoff.ms": 10})  # librdkafka waits 100 ms after CONCURRENT_TRANSACTIONS
    producer.init_transactions()
    consumer.subscribe([source])
    done = 0
    started = None
    while done < records:
        msgs = [m for m in consumer.consume(num_messages=batch, timeout=1.0) if m.error() is None]
        if not msgs:
            continue
        started = started or (time.monotonic(), time.process_time())
        producer.begin_transaction()
        for msg in msgs:
            producer.produce(out, msg.value(), msg.key())
        producer.send_offsets_to_transaction(consumer.position(consumer.assignment()),
                                             consumer.consumer_group_metadata())
        producer.commit_transaction()
        done += len(msgs)
    wall, cpu = time.monotonic() - started[0], time.process_time() - started[1]
    consumer.close()
    print(f"{done} {wall} {cpu}")


def _prepare(bootstrap: str, prefix: str, records: int, size: int) -> None:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    source, sink = _topics(prefix)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    names = [source] + [f"{sink}.{c}" for c in ("aiokafka", "confluent")]
    for future in admin.create_topics([NewTopic(n, PARTITIONS, 1) for n in names]).values():
        future.result()
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 20})
    value = os.urandom(size // 2).hex().encode()
    for i in range(records):
        producer.produce(source, value, f"message-{i}".encode())
        if i % 10_000 == 0:
            producer.poll(0)
    producer.flush()


def _run_child(client: str, bootstrap: str, prefix: str, records: int, batch: int,
               linger: int) -> tuple[int, float, float]:
    out = subprocess.run([sys.executable, __file__, "--child", client, "--bootstrap", bootstrap, "--prefix", prefix,
                          "--records", str(records), "--batch", str(batch), "--linger-ms", str(linger)],
                         check=True, capture_output=True, text=True, timeout=900)
    done, wall, cpu = out.stdout.split()[-3:]
    return int(done), float(wall), float(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--size", type=int, default=1500)
    parser.add_argument("--base", type=int, default=26150)
    parser.add_argument("--linger-ms", type=int, default=1000, help="both producers' linger (poststelle's: 1000)")
    parser.add_argument("--bootstrap", default="")
    parser.add_argument("--prefix", default="")
    parser.add_argument("--child", choices=["aiokafka", "confluent"])
    args = parser.parse_args()
    if args.child == "aiokafka":
        from pipeline import eventloop
        eventloop.run(_aiokafka_hop(args.bootstrap, args.prefix, "aiokafka", args.records, args.batch,
                                     args.linger_ms))
        return
    if args.child == "confluent":
        _confluent_hop(args.bootstrap, args.prefix, "confluent", args.records, args.batch, args.linger_ms)
        return
    try:
        import confluent_kafka
    except ImportError:
        sys.exit("confluent-kafka is not installed: .venv/bin/pip install confluent-kafka")

    def measure(bootstrap: str) -> None:
        prefix = f"clients{secrets.token_hex(4)}"
        print(f"bench/kafka_clients.py {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}: {args.records} records"
              f" of {args.size} bytes, batches of {args.batch}, linger {args.linger_ms} ms, {PARTITIONS} partitions; aiokafka "
              f"{__import__('aiokafka').__version__}, confluent-kafka {confluent_kafka.version()} (librdkafka "
              f"{confluent_kafka.libversion()[0]}); {os.cpu_count()} cores, load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        _prepare(bootstrap, prefix, args.records, args.size)
        for client in ("aiokafka", "confluent"):
            done, wall, cpu = _run_child(client, bootstrap, prefix, args.records, args.batch, args.linger_ms)
            print(f"  {client:10s} {done} records in {wall:.1f}s: {done / wall:,.0f} records/s; "
                  f"{cpu:.1f} CPU-s = {cpu / done * 1000:.3f} CPU-s per 1000 records "
                  f"({done / cpu:,.0f} records per CPU-second)")

    if args.bootstrap:
        measure(args.bootstrap)
        return
    from pystack import BenchStack
    with BenchStack(args.base, "kafka") as stack:
        measure(stack.bootstrap)


if __name__ == "__main__":
    main()
