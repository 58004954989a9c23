"""Tables kept in compacted Kafka topics and replayed into memory: the one reader of compacted topics.

A *table* is a compacted topic of string keys and byte values (None: a tombstone, the key is
gone). A process that needs the table reads its topic from the beginning into local state, then
either follows it for changes (greylisting, the site's lists: `follow_tables`) or catches up on
demand before a decision that depends on it (the delivery ledger, the verdict service's
accepted-early records: `Transport.catch_up`, which reads up to the end offsets of that moment,
so a write acknowledged before the call is always seen). Lookups never touch the network. The log
is behind `Transport` (httpx's idea):

- `KafkaTransport` reads every partition of the tables' topics in no consumer group (each process
  wants every record) and writes with the durable producer;
- `MemoryTransport` over a shared `MemoryLog` is the same for unit tests and benchmarks.

`follow_tables` is the loop the followers share: open, replay up to the end offsets found at open
(then set `caught_up`), follow new records for ever; on a failure before catching up it closes and
tries again, afterwards it keeps the local state and reads on; either way it waits for the broker
through the process's `BrokerWatch` (pipeline/broker.py). `Follower` runs that loop as a task for
an in-memory copy (the site's lists, the per-user settings): start, ready, close.

A follower that keeps a snapshot of its state (the spam stage's Bayes model) resumes instead of
replaying: `open(start)` goes to the `Positions` the snapshot covers and says whether they fit the
log (a position past a partition's end means the log is not the one the snapshot was taken of: it
then reads from the beginning, and `follow_tables` calls `on_rewind` so the follower drops the
snapshot's state); `positions()` tells where reading stands, for the next snapshot.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Protocol

from aiokafka import TopicPartition

from pipeline.broker import watch
from pipeline.bus import (
    behind,
    kafka_bound,
    make_consumer,
    make_producer,
    start_or_release,
    stop_quietly,
    topic_partitions,
)
from pipeline.producers import RenewingProducer
from pipeline.settings import KafkaSettings

__all__ = ["Apply", "Positions", "Transport", "MemoryLog", "MemoryTransport", "KafkaTransport", "TopicMissing",
           "follow_tables", "Follower"]

log = logging.getLogger(__name__)

Apply = Callable[[str, str, "bytes | None"], None]  # (table, key, value or None for a tombstone)
Positions = dict[str, dict[int, int]]  # table -> partition -> offset of the next record to read


class Transport(Protocol):
    """The shared log of some tables."""

    async def open(self, start: Positions | None = None) -> bool:
        """Connect and go to the beginning of every table (to `start` where it names a partition);
        note where they end now. Returns False when `start` does not fit the log (then every table
        is read from its beginning)."""

    async def positions(self) -> Positions:
        """Where reading stands: the offset of the next record of every partition."""

    async def read_to_end(self, apply: Apply) -> None:
        """Apply every record written before `open`."""

    async def read_new(self, apply: Apply) -> None:
        """Apply what arrived since the last read; wait a moment when nothing did."""

    async def catch_up(self, apply: Apply) -> int:
        """Apply every record written up to now (by any process); returns how many were read."""

    async def write(self, table: str, key: str, value: bytes | None) -> asyncio.Future | None:
        """Hand one record (None: a tombstone) to the log; raise when that is impossible.

        Returns None when the record is written, or a future that completes when it is (or fails).
        """

    async def close(self) -> None:
        """Disconnect; safe to call when not (or only partly) open."""


class MemoryLog:
    """Tables as in-process lists of (key, value), shared by every `MemoryTransport` on it.

    Set `available` to False to act like a broker that is down.
    """

    def __init__(self, tables: Iterable[str]) -> None:
        self.records: dict[str, list[tuple[str, bytes | None]]] = {table: [] for table in tables}
        self.available = True

    def latest(self, table: str, key: str) -> bytes | None:
        """The last value written for `key` (what compaction keeps); KeyError if never written."""
        for record_key, value in reversed(self.records[table]):
            if record_key == key:
                return value
        raise KeyError(key)


class MemoryTransport:
    """A `Transport` over a `MemoryLog`, with its own read positions (one per reader)."""

    def __init__(self, memory: MemoryLog, poll_interval: float = 0.005) -> None:
        self.memory = memory
        self.poll_interval = poll_interval
        self._positions = {table: 0 for table in memory.records}
        self._ends = dict(self._positions)

    def _require_available(self) -> None:
        if not self.memory.available:
            raise ConnectionError("memory log is unavailable")

    async def open(self, start: Positions | None = None) -> bool:
        self._require_available()
        self._ends = {table: len(records) for table, records in self.memory.records.items()}
        start = start or {}
        fits = all(table in self._ends and set(offsets) <= {0} and 0 <= offsets.get(0, 0) <= self._ends[table]
                   for table, offsets in start.items())  # one partition, 0, per table
        self._positions = {table: start.get(table, {}).get(0, 0) if fits else 0 for table in self.memory.records}
        return fits

    async def positions(self) -> Positions:
        return {table: {0: position} for table, position in self._positions.items()}

    async def read_to_end(self, apply: Apply) -> None:
        self._read(apply, self._ends)

    async def read_new(self, apply: Apply) -> None:
        if not self.memory.available or not self._read(apply, {t: len(r) for t, r in self.memory.records.items()}):
            await asyncio.sleep(self.poll_interval)

    async def catch_up(self, apply: Apply) -> int:
        self._require_available()
        return self._read(apply, {t: len(r) for t, r in self.memory.records.items()})

    def _read(self, apply: Apply, ends: Mapping[str, int]) -> int:
        count = 0
        for table, end in ends.items():
            for key, value in self.memory.records[table][self._positions[table]:end]:
                apply(table, key, value)
                count += 1
            self._positions[table] = max(self._positions[table], end)
        return count

    async def write(self, table: str, key: str, value: bytes | None) -> None:
        self._require_available()
        self.memory.records[table].append((key, value))
        return None

    async def close(self) -> None:
        pass


class TopicMissing(RuntimeError):
    pass


class KafkaTransport:
    """A `Transport` over compacted topics; reads every partition, in no consumer group."""

    def __init__(self, kafka: KafkaSettings, topics: Mapping[str, str], client_id: str = "tables",
                 linger_ms: int | None = None) -> None:
        self.kafka = kafka
        self.linger_ms = linger_ms  # how long a write waits for others to share its request (None: the default)
        self.topics = dict(topics)  # table -> topic
        self._table_of = {topic: table for table, topic in self.topics.items()}
        self.client_id = client_id
        self._writer: RenewingProducer | None = None
        self._consumer = None
        self._ends: dict[TopicPartition, int] = {}

    async def open(self, start: Positions | None = None) -> bool:
        await self.close()
        make = make_producer if self.linger_ms is None else partial(make_producer, linger_ms=self.linger_ms)
        self._writer = RenewingProducer(self.kafka, f"{self.client_id}-writer", make)  # starts on the first write
        self._consumer = make_consumer(self.kafka, None, f"{self.client_id}-reader")
        await start_or_release(self._consumer, kafka_bound(self.kafka))
        partitions = [tp for topic in self.topics.values() for tp in await self._partitions(topic)]
        self._consumer.assign(partitions)
        self._ends = await self._consumer.end_offsets(partitions)
        offsets = {TopicPartition(self.topics[table], p): offset
                   for table, by_partition in (start or {}).items() for p, offset in by_partition.items()}
        fits = set(offsets) <= set(partitions) and all(0 <= o <= self._ends[tp] for tp, o in offsets.items())
        if not fits:
            offsets = {}
        rest = [tp for tp in partitions if tp not in offsets]
        if rest:
            await self._consumer.seek_to_beginning(*rest)
        for tp, offset in offsets.items():
            self._consumer.seek(tp, offset)
        return fits

    async def positions(self) -> Positions:
        if self._consumer is None:
            raise ConnectionError(f"{self.client_id} transport is not open")
        found: Positions = {}
        for tp in sorted(self._consumer.assignment()):
            found.setdefault(self._table_of[tp.topic], {})[tp.partition] = await self._consumer.position(tp)
        return found

    async def _partitions(self, topic: str) -> list[TopicPartition]:
        found = await topic_partitions(self._consumer, topic)
        if not found:
            raise TopicMissing(f"topic {topic} does not exist")
        return found

    async def read_to_end(self, apply: Apply) -> None:
        while await behind(self._consumer, self._ends):
            await self.read_new(apply)

    async def read_new(self, apply: Apply) -> None:
        await self._read_batch(apply)

    async def catch_up(self, apply: Apply) -> int:
        if self._consumer is None:
            raise ConnectionError(f"{self.client_id} transport is not open")
        ends = await self._consumer.end_offsets(list(self._consumer.assignment()))
        count = 0
        while await behind(self._consumer, ends):
            count += await self._read_batch(apply)
        return count

    async def _read_batch(self, apply: Apply) -> int:
        batch = await self._consumer.getmany(timeout_ms=500)
        count = 0
        for tp, records in batch.items():
            table = self._table_of[tp.topic]
            for record in records:
                if record.key is not None:
                    count += 1
                    apply(table, record.key.decode("utf-8", "replace"), record.value)
        return count

    async def write(self, table: str, key: str, value: bytes | None) -> asyncio.Future:
        if self._writer is None:
            raise ConnectionError(f"{self.client_id} transport is not open")
        return await self._writer.send(self.topics[table], value, key=key.encode())

    def write_abandoned(self) -> None:
        """A caller gave up waiting for a write: the next write goes through a new producer."""
        if self._writer is not None:
            self._writer.spend()

    async def close(self) -> None:
        consumer, writer = self._consumer, self._writer
        self._consumer = self._writer = None
        if writer is not None:  # sends what it holds first: bounded, the broker may be gone
            await writer.stop()
        if consumer is not None:
            await stop_quietly(consumer, kafka_bound(self.kafka))


async def follow_tables(transport: Transport, apply: Apply, caught_up: asyncio.Event, *, label: str,
                        retry_every: float | None = None, on_caught_up: Callable[[], None] | None = None,
                        start: Positions | None = None, on_rewind: Callable[[], None] | None = None) -> None:
    """Replay the tables into `apply`, set `caught_up`, then follow them until cancelled.

    While the log is unreachable this waits (reported to the process's `BrokerWatch` as `label`),
    trying again after a growing pause (at most `retry_every` seconds when given); once replayed,
    the local state is kept and used meanwhile. With `start` the replay resumes there (a follower
    whose state already holds everything before it); when `start` does not fit the log, `on_rewind`
    is called and the replay starts from the beginning. A try after a failure resumes at `start`
    again: the follower's `apply` must take records it has seen once more (a fold of the latest
    record per key does).
    """

    async def replay() -> None:
        try:
            if not await transport.open(start) and start is not None and on_rewind is not None:
                on_rewind()
            await transport.read_to_end(apply)
        except BaseException:
            await transport.close()
            raise

    # any failure is retried, not only the broker's: a missing topic, a reader that broke
    await watch().retry(label, replay, errors=(Exception,), max_pause=retry_every)
    caught_up.set()
    if on_caught_up is not None:
        on_caught_up()
    while True:
        await watch().retry(label, lambda: transport.read_new(apply), errors=(Exception,), max_pause=retry_every)


class Follower:
    """`follow_tables` as a task of its own, for a process's in-memory copy of some tables.

    `start` waits (at most `timeout`) for the replay, `ready` says whether it finished, `close` stops
    following and closes the transport. Without a transport (None: memory only) it is ready at once.
    """

    def __init__(self, transport: Transport | None, apply: Apply, *, label: str, retry_every: float | None = None,
                 on_caught_up: Callable[[], None] | None = None, on_rewind: Callable[[], None] | None = None) -> None:
        self.transport = transport
        self.apply = apply
        self.label = label
        self.retry_every = retry_every
        self.on_caught_up = on_caught_up
        self.on_rewind = on_rewind
        self._caught_up = asyncio.Event()
        self._task: asyncio.Task | None = None

    @property
    def ready(self) -> bool:
        return self._caught_up.is_set()

    async def start(self, timeout: float = 15.0, positions: Positions | None = None) -> bool:
        """Replay the tables (from `positions` when the state already holds what lies before them:
        see `follow_tables`); return whether that finished within `timeout` (it goes on if not)."""
        if self.transport is None:
            self._caught_up.set()
            return True
        if self._task is None:
            self._task = asyncio.create_task(
                follow_tables(self.transport, self.apply, self._caught_up, label=self.label,
                              retry_every=self.retry_every, on_caught_up=self.on_caught_up, start=positions,
                              on_rewind=self.on_rewind),
                name=f"{self.label}-follow")
        return await self.wait(timeout)

    async def wait(self, timeout: float) -> bool:
        """Wait at most `timeout` seconds for the replay; whether it finished."""
        try:
            await asyncio.wait_for(asyncio.shield(self._caught_up.wait()), timeout)
        except TimeoutError:
            log.warning("%s: not replayed within %.0fs; still trying", self.label, timeout)
        return self.ready

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task], timeout=5)
        if self.transport is not None:
            await self.transport.close()
