"""Producers that fail closed when the broker goes away, and are replaced rather than reused.

Two things aiokafka 0.14 does during a broker outage (found by experiment, see docs/architecture.md,
"Broker outages") decide the shape of this module:

- A record whose batch expires while the broker is away fails only its own future; the transaction
  it belongs to is *not* marked failed and commits without it. Measured: 600 input records
  committed, 99 of their outputs missing. So `TransactionalProducer` awaits every record of a
  transaction before it commits, and gives the transaction up when one failed.
- After such an expired batch the idempotent producer's sequence numbers have a gap it never
  repairs: every later record to that partition fails with `OutOfOrderSequenceNumber` (measured:
  300 of 300 sent after the broker was back). So a producer that failed is never used again:
  `abandon` drops it without flushing, and its successor starts afresh. For a transactional
  producer the successor (same transactional id) fences it, and the broker aborts whatever
  transaction it left open.

Every wait for the broker is bounded (twice `kafka.request_timeout_ms`); running out of time raises
`BrokerUnavailable`, so the caller gives up the work in flight and redoes it once the broker is back.
"""
from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition

from pipeline.broker import BrokerUnavailable, describe
from pipeline.bus import kafka_bound, make_producer, make_transactional_producer, start_or_release
from pipeline.settings import KafkaSettings

__all__ = ["TransactionalProducer", "RenewingProducer", "abandon"]

log = logging.getLogger(__name__)
ABANDON_WAIT = 1.0  # seconds an abandoned producer's sender may take to wind down


@asynccontextmanager
async def _bounded(seconds: float, what: str) -> AsyncIterator[None]:
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise BrokerUnavailable(f"no answer from kafka within {seconds:.0f}s ({what})") from None


def _known_partitions(producer: AIOKafkaProducer, topic: str) -> set[int] | None:
    """The topic's partitions as the producer's metadata has them; None while it does not know them."""
    cluster = getattr(getattr(producer, "client", None), "cluster", None)
    return cluster.partitions_for_topic(topic) if cluster is not None else None


async def _partitions_of(producer: AIOKafkaProducer, bound: float, topic: str) -> set[int]:
    known = _known_partitions(producer, topic)
    if known:
        return known
    async with _bounded(bound, f"the partitions of {topic}"):
        return await producer.partitions_for(topic)


async def _queue(producer: AIOKafkaProducer, bound: float, topic: str, value: bytes | None, key: bytes | None,
                 headers: list[tuple[str, bytes]] | None = None) -> asyncio.Future:
    """`producer.send`, bounded: by aiokafka itself once the topic's partitions are known (then only a
    full buffer makes it wait, `request_timeout_ms` at most), else by `bound` (in an outage the
    metadata update can hang). The common case thus costs no timer per record."""
    if _known_partitions(producer, topic) is not None:
        return await producer.send(topic, value, key=key, headers=headers)
    async with _bounded(bound, f"queueing a record for {topic}"):
        return await producer.send(topic, value, key=key, headers=headers)


async def _queue_batch(producer: AIOKafkaProducer, bound: float, topic: str, batch: Any,
                       partition: int) -> asyncio.Future:
    """`producer.send_batch`, bounded by `bound` (it waits for the partition's batch before it to drain)."""
    async with _bounded(bound, f"queueing a batch for {topic}"):
        return await producer.send_batch(batch, topic, partition=partition)


async def _send_now(producer: AIOKafkaProducer) -> None:
    """Send a transaction's lingering records now, in as few requests as possible.

    Transactional producers linger long (`pipeline.bus`), so a batch's records leave in one produce
    request at its end instead of one every few milliseconds; this is the end. aiokafka's commit
    does the same (`flush_for_commit`: close the open batches, wake the sender); it is called
    before the commit so that a failed record is seen first. (A stand-in producer of the unit tests
    has no accumulator and sends at once; `tests/pipeline/test_producers.py` checks that aiokafka's
    producer has this one.)
    """
    accumulator = getattr(producer, "_message_accumulator", None)
    if accumulator is not None:
        await accumulator.flush_for_commit()


async def _send_keyed(producer: AIOKafkaProducer, partitions: list[int], records: list[tuple[bytes, bytes]],
                      send_batch: Callable[[Any, int], Awaitable[asyncio.Future]]) -> list[tuple[asyncio.Future, int]]:
    """Put (key, value) records into one batch per partition and hand each batch to `send_batch` (a
    full one at once, the rest at the end); per batch, its delivery future and how many records it holds.

    The partition is the key's CRC-32 modulo the partition count, not Kafka's murmur2 (5 µs a key in
    aiokafka's Python against 0.1), and a batch costs one append per record instead of a `send` each:
    records of one key still share a partition, but another client would put that key elsewhere. Only
    for topics whose keys no other client writes (session events; `received`, keyed by new message ids)."""
    batches: dict[int, tuple[Any, int]] = {}
    deliveries: list[tuple[asyncio.Future, int]] = []
    for key, value in records:
        partition = partitions[zlib.crc32(key) % len(partitions)]
        batch, count = batches.get(partition, (None, 0))
        if batch is None or batch.append(key=key, value=value, timestamp=None) is None:
            if batch is not None:  # full: on its way, and a new one
                deliveries.append((await send_batch(batch, partition), count))
            batch, count = producer.create_batch(), 0
            if batch.append(key=key, value=value, timestamp=None) is None:
                raise ValueError(f"a record of {len(value)} bytes does not fit in a batch")
        batches[partition] = (batch, count + 1)
    for partition, (batch, count) in batches.items():
        deliveries.append((await send_batch(batch, partition), count))
    return deliveries


async def abandon(producer: AIOKafkaProducer) -> None:
    """Stop a producer *without* flushing: nothing it still holds may reach the broker later.

    `AIOKafkaProducer.stop()` first waits for its buffered records (and a pending EndTxn) to be
    sent; cut short by a timeout, it leaves the sender task running, which then commits the
    transaction once the broker is back. So the sender is cancelled directly. Whatever the broker
    already holds of an open transaction is aborted when the next producer with the same
    transactional id registers (fencing), or by the broker's transaction timeout.
    """
    producer._closed = True  # aiokafka has no public "close without flush"
    if producer._sender is not None:
        try:  # cancels the sender task, which then waits for its requests in flight: not for long
            await asyncio.wait_for(producer._sender.close(), ABANDON_WAIT)
        except TimeoutError:
            pass
    await producer.client.close()


async def _stop_or_abandon(producer: AIOKafkaProducer, bound: float) -> None:
    """Stop cleanly, sending what the producer holds; if the broker does not take it within `bound`,
    abandon it (a `stop()` cut short leaves the sender running, to deliver it whenever it can)."""
    try:
        await asyncio.wait_for(producer.stop(), bound)
    except Exception as exc:
        log.debug("producer stop: %s; abandoning it", describe(exc))
        await abandon(producer)


class TransactionalProducer:
    """A transactional producer whose transactions commit all their records or none.

    Used like aiokafka's (`transaction()`, `send`, `send_offsets_to_transaction`). A transaction
    whose records, offsets or commit fail or time out raises; the producer is then abandoned and
    the next `transaction()` (or `start()`) makes its successor, which fences it.

    `rotation` > 1 takes turns between that many aiokafka producers (transactional ids `id`,
    `id.r1`, ...), one transaction each. After a commit the broker still writes the transaction's
    markers; a transaction that starts on the same id before they are written is refused with
    CONCURRENT_TRANSACTIONS and aiokafka waits a fixed 20 ms before trying again, so back-to-back
    transactions on one id are bound by that wait, not by the work (measured: 1 id 93-133
    transactions/s with a p90 of 25 ms; 2 ids in turn 270-337/s, p90 3-6 ms; docs/performance.md).
    Transactions still run one after another, so their records and offsets keep their order; a
    later transaction's offsets are appended after an earlier one's and win over them.
    """

    def __init__(self, kafka: KafkaSettings, transactional_id: str,
                 make: Callable[[KafkaSettings, str], AIOKafkaProducer] = make_transactional_producer,
                 rotation: int = 1) -> None:
        self.kafka = kafka
        self.transactional_id = transactional_id
        self.transactional_ids = [transactional_id] + [f"{transactional_id}.r{k}" for k in range(1, rotation)]
        self._make = make  # (unit tests pass a stand-in for aiokafka's producer)
        self.bound = kafka_bound(kafka)
        self._producers: list[AIOKafkaProducer | None] = [None] * len(self.transactional_ids)
        self._turn = 0  # the producer of the next transaction
        self._deliveries: list[asyncio.Future] = []
        self._starting = asyncio.Lock()

    @property
    def started(self) -> bool:
        return all(p is not None for p in self._producers)

    @property
    def _producer(self) -> AIOKafkaProducer | None:
        """The producer of the transaction in progress (or of the next one)."""
        return self._producers[self._turn]

    async def start(self) -> None:
        """Register the transactional ids (fencing any predecessors); raises if the broker is away."""
        async with self._starting:
            for k, tid in enumerate(self.transactional_ids):
                if self._producers[k] is None:
                    producer = self._make(self.kafka, tid)
                    await start_or_release(producer, self.bound)
                    self._producers[k] = producer

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator["TransactionalProducer"]:
        await self.start()
        producer = self._producer
        assert producer is not None
        self._deliveries = []
        try:
            async with _bounded(self.bound, "beginning a transaction"):
                await producer.begin_transaction()
            yield self
            async with _bounded(self.bound, "the transaction's records"):
                await _send_now(producer)
                # a record that failed fails the transaction: aiokafka would commit without it
                await asyncio.gather(*self._deliveries)
            async with _bounded(self.bound, "the commit"):
                await producer.commit_transaction()
        except BaseException:
            await self.discard()
            raise
        finally:
            self._deliveries = []
        self._turn = (self._turn + 1) % len(self._producers)

    async def send(self, topic: str, value: bytes, *, key: bytes | None = None,
                   headers: list[tuple[str, bytes]] | None = None) -> asyncio.Future:
        assert self._producer is not None, "send() outside transaction()"
        delivery = await _queue(self._producer, self.bound, topic, value, key, headers)
        self._deliveries.append(delivery)
        return delivery

    async def send_keyed(self, topic: str, records: list[tuple[bytes, bytes]]) -> None:
        """Queue (key, value) records in the transaction, one batch per partition (`_send_keyed`: the
        partition is the key's CRC-32, so only for topics whose keys no other client writes)."""
        producer = self._producer
        assert producer is not None, "send_keyed() outside transaction()"
        partitions = sorted(await _partitions_of(producer, self.bound, topic))

        async def send_batch(batch: Any, partition: int) -> asyncio.Future:
            delivery = await _queue_batch(producer, self.bound, topic, batch, partition)
            self._deliveries.append(delivery)
            return delivery

        await _send_keyed(producer, partitions, records, send_batch)

    async def send_pending(self) -> None:
        """Send the transaction's records so far now, not at its end, and wait for the broker's
        acknowledgement (they still become visible only with the commit)."""
        assert self._producer is not None, "send_pending() outside transaction()"
        async with _bounded(self.bound, "the transaction's records"):
            await _send_now(self._producer)

    async def send_offsets_to_transaction(self, offsets: dict[TopicPartition, int], group_id: str) -> None:
        assert self._producer is not None, "send_offsets_to_transaction() outside transaction()"
        async with _bounded(self.bound, "adding the offsets to the transaction"):
            await self._producer.send_offsets_to_transaction(offsets, group_id)

    async def discard(self) -> None:
        """Drop every producer without flushing; an open transaction is aborted by its successor."""
        producers, self._producers = self._producers, [None] * len(self._producers)
        self._turn = 0
        for producer in producers:
            if producer is not None:
                await abandon(producer)

    async def stop(self) -> None:
        """Stop cleanly (nothing is in flight between transactions); bounded, the broker may be gone."""
        producers, self._producers = self._producers, [None] * len(self._producers)
        for producer in producers:
            if producer is not None:
                await _stop_or_abandon(producer, self.bound)


class RenewingProducer:
    """The durable producer for single records outside transactions, renewed after a failure.

    Started on first use, so a broker that is down makes `send` raise instead of the component
    failing at start. A record that fails marks the producer spent: the next `send` abandons it and
    starts a new one (see the module docstring for why it cannot be reused).
    """

    def __init__(self, kafka: KafkaSettings, client_id: str,
                 make: Callable[[KafkaSettings, str], AIOKafkaProducer] = make_producer) -> None:
        self.kafka = kafka
        self.client_id = client_id
        self._make = make
        self.bound = kafka_bound(kafka)
        self._producer: AIOKafkaProducer | None = None
        self._spent = False
        self._renewing = asyncio.Lock()  # concurrent senders: one producer, not one each

    async def send(self, topic: str, value: bytes | None, *, key: bytes | None = None) -> asyncio.Future:
        """Queue one record; returns the future of its acknowledgement."""
        producer = await self._current()
        delivery = await _queue(producer, self.bound, topic, value, key)
        if delivery.done():
            self._check(producer, delivery)
        else:
            delivery.add_done_callback(lambda done: self._check(producer, done))
        return delivery

    async def send_keyed(self, topic: str, records: list[tuple[bytes, bytes]]) -> list[tuple[asyncio.Future, int]]:
        """Queue (key, value) records in one batch per partition (`_send_keyed`); per batch, the future
        of its acknowledgement and how many records it holds."""
        producer = await self._current()
        partitions = sorted(await _partitions_of(producer, self.bound, topic))
        return await _send_keyed(producer, partitions, records,
                                 lambda batch, partition: self._send_batch(producer, batch, topic, partition))

    async def _send_batch(self, producer: AIOKafkaProducer, batch: Any, topic: str, partition: int) -> asyncio.Future:
        delivery = await _queue_batch(producer, self.bound, topic, batch, partition)
        delivery.add_done_callback(lambda done: self._check(producer, done))
        return delivery

    def spend(self) -> None:
        """Mark the producer as not to be used again (a caller gave up waiting for one of its records)."""
        self._spent = True

    def _check(self, producer: AIOKafkaProducer, delivery: asyncio.Future) -> None:
        if producer is self._producer and not delivery.cancelled() and delivery.exception() is not None:
            self._spent = True

    async def _current(self) -> AIOKafkaProducer:
        async with self._renewing:
            if self._spent:
                await self.discard()
            if self._producer is None:
                producer = self._make(self.kafka, self.client_id)
                await start_or_release(producer, self.bound)
                self._producer = producer
            return self._producer

    async def discard(self) -> None:
        producer, self._producer, self._spent = self._producer, None, False
        if producer is not None:
            await abandon(producer)

    async def stop(self) -> None:
        """Send what is queued (bounded), then close; a spent producer is dropped unflushed."""
        if self._spent:
            await self.discard()
            return
        producer, self._producer = self._producer, None
        if producer is not None:
            await _stop_or_abandon(producer, self.bound)
