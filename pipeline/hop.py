"""A transactional hop: consume → handle → produce, one Kafka transaction per batch.

The stage runner, the retry service and the bounce service are hops: each says what one input
record turns into (`handle`), and this class does the Kafka work the same way for all of them.
For a batch, the outputs of every record and the consumer offsets past them are committed in one
transaction (`send_offsets_to_transaction`), so a hop is exactly-once: after a crash the open
transaction is aborted (the restarted process fences it with the same transactional id) and the
batch is processed again from the last committed offset.

- A record that cannot be handled yet — `Hold` (not due), or a temporary error of the hop — is
  not skipped: its partition is rewound to it and paused (for the hold's delay, or a growing
  backoff); records before it in the batch are committed, the other partitions go on.
- Revocation waits until the batch in flight is committed (drain on rebalance).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from pipeline.bus import PartitionBackoff, hold_partition
from pipeline.exactly_once import ExactlyOnceLoop
from pipeline.settings import Settings
from schemas.events import Event, encode_event

__all__ = ["TransactionalHop", "Output", "Hold"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Output:
    topic: str
    key: bytes
    event: Event


class Hold(Exception):
    """The record is fine but not for now (a retry not yet due): try it again after `delay` seconds."""

    def __init__(self, delay: float) -> None:
        super().__init__(f"held for {delay:.1f}s")
        self.delay = delay


class TransactionalHop:
    """Subclasses implement `handle`; `temporary_errors` are retried with backoff, never skipped."""

    temporary_errors: tuple[type[BaseException], ...] = (TimeoutError, ConnectionError)

    def __init__(self, settings: Settings, name: str, input_topics: list[str], instance: str = "0") -> None:
        self.settings = settings
        self.name = name
        self.input_topics = input_topics
        self.group_id = f"{settings.kafka.topic_prefix}.{name}"
        self.transactional_id = f"{self.group_id}.{instance}"
        r = settings.runner
        self.backoff = PartitionBackoff(r.tempfail_backoff_initial, r.tempfail_backoff_max)
        self._lock = asyncio.Lock()

    async def handle(self, record: ConsumerRecord) -> list[Output]:  # pragma: no cover - abstract
        raise NotImplementedError

    async def start(self) -> None:
        """Called once before consuming (open scanners, read a ledger, ...)."""

    async def close(self) -> None:
        """Called once after consuming."""

    async def before_batch(self) -> None:
        """Called before each batch (e.g. to catch up on a table)."""

    async def run(self, stop: asyncio.Event, on_ready: Callable[[], None] | None = None) -> None:
        r = self.settings.runner
        loop = ExactlyOnceLoop(self.settings.kafka, name=self.name, group_id=self.group_id,
                               transactional_id=self.transactional_id, topics=self.input_topics,
                               max_records=r.batch_size, poll_timeout_ms=r.poll_timeout_ms, lock=self._lock)
        try:
            await loop.open()
            await self.start()
            log.info("%s consuming %s as %s", self.name, ", ".join(self.input_topics), self.group_id)
            if on_ready:
                on_ready()

            async def one_batch(batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
                await self.before_batch()
                await self._process_batch(loop.consumer, loop.producer, batch)

            await loop.consume(stop, one_batch)
        finally:
            await self.close()
            await loop.close()

    async def _process_batch(self, consumer, producer, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        offsets: dict[TopicPartition, int] = {}
        async with producer.transaction():
            for tp, records in batch.items():
                for record in records:
                    try:
                        outputs = await self.handle(record)
                    except Hold as hold:
                        hold_partition(consumer, tp, record.offset, hold.delay)
                        break
                    except self.temporary_errors as exc:
                        self._retry_later(consumer, tp, record, exc)
                        break
                    for out in outputs:
                        await producer.send(out.topic, encode_event(out.event), key=out.key)
                    offsets[tp] = record.offset + 1
                    self.backoff.reset(tp)
            if offsets:
                await producer.send_offsets_to_transaction(offsets, self.group_id)

    def _retry_later(self, consumer, tp: TopicPartition, record: ConsumerRecord, exc: BaseException) -> None:
        delay = self.backoff.next_delay(tp)
        log.warning("%s: temporary failure at %s[%d]@%d (%s: %s); retrying in %.1fs", self.name, tp.topic,
                    tp.partition, record.offset, type(exc).__name__, exc, delay)
        hold_partition(consumer, tp, record.offset, delay)
