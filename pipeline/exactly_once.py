"""The Kafka side of an exactly-once consume → produce loop, kept going through broker outages.

A transactional hop (`pipeline.hop`) and a delivery sink (`consumers.sinks.delivery`) both read
batches as members of a consumer group and commit their outputs together with the offsets past the
batch in one transaction. `ExactlyOnceLoop` owns those two clients and the loop around them, so
both ride out a broker outage the same way:

- `open` starts the transactional producer and the consumer, waiting for the broker while it is
  unreachable (`BrokerWatch.retry`); a component started during an outage waits instead of exiting.
- `consume` polls and hands each batch to the caller. While the broker is away, aiokafka's
  `getmany` returns nothing and reconnects by itself; the consumer stays in its group.
- A batch whose Kafka work fails or times out (the records, the offsets, the commit, or a table
  read of the caller) is given up: its producer is abandoned, the successor (same transactional id)
  is started once the broker answers, which fences the old one so the broker aborts its transaction,
  and then the consumer is rewound to the group's committed offsets. Those are the offsets of the
  last transaction that committed, read only after the fencing has settled whether the given-up
  one did: the batch is redone from there, nothing is skipped and nothing is committed twice.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from pipeline.broker import BrokerUnavailable, describe, watch
from pipeline.bus import DrainOnRevoke, kafka_bound, make_consumer, start_or_release, stop_quietly
from pipeline.producers import TransactionalProducer
from pipeline.settings import KafkaSettings

__all__ = ["ExactlyOnceLoop", "Batch", "BATCH_FAILURES"]

log = logging.getLogger(__name__)

Batch = dict[TopicPartition, list[ConsumerRecord]]
# what makes a batch's Kafka work fail: the batch is then redone from the committed offsets
BATCH_FAILURES = (KafkaError, BrokerUnavailable)


class ExactlyOnceLoop:
    """A consumer group member and its transactional producer; `name` labels logs and the client id."""

    def __init__(self, kafka: KafkaSettings, *, name: str, group_id: str, transactional_id: str,
                 topics: list[str], max_records: int, poll_timeout_ms: int, lock: asyncio.Lock,
                 on_assigned: Callable[[], Awaitable[object]] | None = None,
                 producer: TransactionalProducer | None = None,
                 consumer_factory: Callable[..., AIOKafkaConsumer] = make_consumer,
                 consumer_options: dict[str, int] | None = None) -> None:
        self.kafka = kafka
        self.name = name
        self.group_id = group_id
        self.topics = topics
        self.max_records, self.poll_timeout_ms = max_records, poll_timeout_ms
        self.lock = lock
        self.on_assigned = on_assigned
        self.bound = kafka_bound(kafka)
        # (unit tests pass stand-ins for aiokafka's clients)
        self.producer = producer or TransactionalProducer(kafka, transactional_id,
                                                              rotation=kafka.transaction_rotation)
        self._consumer_factory = consumer_factory
        self._consumer_options = consumer_options or {}  # more settings of the consumer (fetch sizes)
        self.consumer: AIOKafkaConsumer | None = None
        self.redone = 0  # batches given up and redone after a broker failure
        self._redone_in_a_row = 0

    async def open(self) -> None:
        """Start both clients, waiting for the broker as long as it takes (or until told to stop)."""
        await watch().retry(self.name, self.producer.start)
        await watch().retry(self.name, self._start_consumer)

    async def _start_consumer(self) -> None:
        consumer = self._consumer_factory(self.kafka, self.group_id, self.name, max_poll_records=self.max_records,
                                          **self._consumer_options)
        await start_or_release(consumer, self.bound)
        # subscribed only once started: `start()` of a subscribed consumer also waits for the group to
        # assign it partitions, which after an outage takes until the broker drops the members that
        # were lost meanwhile (their session timeout). Cutting that wait short and trying again
        # leaves a pending member each time, which the next rebalance waits for in turn (seen: two
        # minutes instead of seconds). So the join happens in the background, during `getmany`.
        consumer.subscribe(self.topics, listener=DrainOnRevoke(self.lock, self.on_assigned))
        self.consumer = consumer

    async def consume(self, stop: asyncio.Event, process: Callable[[Batch], Awaitable[None]],
                      idle: Callable[[], Awaitable[None]] | None = None) -> None:
        """Hand batches to `process` until `stop` is set; a batch that failed on Kafka is redone.
        `idle` (if given) runs after a poll that found nothing, under the same lock and rules."""
        while not stop.is_set():
            batch = await watch().retry(self.name, self._poll, errors=(KafkaError,))
            if not batch and idle is None:
                continue
            async with self.lock:
                try:
                    await (process(batch) if batch else idle())  # type: ignore[misc]
                except BATCH_FAILURES as exc:
                    await self._redo_after(exc)
                else:
                    self._redone_in_a_row = 0

    async def _poll(self) -> Batch:
        assert self.consumer is not None, "consume() before open()"
        return await self.consumer.getmany(timeout_ms=self.poll_timeout_ms, max_records=self.max_records)

    async def _redo_after(self, exc: BaseException) -> None:
        """Give the batch up: abandon its transaction, and once the broker answers, fence it and rewind."""
        self.redone += 1
        self._redone_in_a_row += 1
        log.warning("%s: batch given up (%s); it is redone from the last committed offsets", self.name,
                    describe(exc))
        watch().lost(self.name, exc)
        await self.producer.discard()
        if self._redone_in_a_row > 1:  # the broker answers, yet the batch fails again: not in a hot loop
            w = watch()
            await w.pause(min(w.backoff_initial * 2 ** (self._redone_in_a_row - 2), w.backoff_max))
        await watch().retry(self.name, self._fence_and_rewind)

    async def _fence_and_rewind(self) -> None:
        await self.producer.start()  # same transactional id: the broker aborts the given-up transaction
        assert self.consumer is not None
        for tp in self.consumer.assignment():
            async with asyncio.timeout(self.bound):
                offset = await self.consumer.committed(tp)
            if offset is None or offset < 0:
                await self.consumer.seek_to_beginning(tp)  # nothing committed yet: auto_offset_reset
            else:
                self.consumer.seek(tp, offset)

    async def close(self) -> None:
        """Stop both clients, bounded: the broker may be gone."""
        if self.consumer is not None:
            await stop_quietly(self.consumer, self.bound)
        await self.producer.stop()
