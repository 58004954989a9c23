"""The retry service: deferred deliveries wait in retry topics, then go back to their sink.

A delivery sink that gets a 4xx writes the `deferred` event to ``poststelle.retry.<delay>`` (one
topic per entry of `delivery.retry_schedule`; the last entry repeats). All records of one retry
topic wait equally long, so each partition is in due order: the service holds a partition at its
first record that is not due yet (seek back + pause, other partitions and topics go on), and
re-publishes due records as `routed` events to ``poststelle.routed.<destination>``, in one
transaction with its offsets. A deferred delivery is thus never lost by a crash of this service or
of the sink, and never blocks other mail.

Before re-publishing, the ledger is asked: a delivery that meanwhile finished (delivered, bounced)
or was tried again (`poststelle queue retry`, a newer attempt) is stale and dropped.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from consumers.sinks.ledger import Ledger
from pipeline.bus import DrainOnRevoke, Topics, hold_partition, make_consumer, make_transactional_producer
from pipeline.settings import Settings
from schemas.events import Deferred, Routed, decode_event, encode_event, epoch_from_iso

__all__ = ["RetryService", "run_retry_service", "is_stale"]

log = logging.getLogger(__name__)


def is_stale(deferred: Deferred, ledger: Ledger) -> bool:
    """Whether the ledger shows that this retry is no longer wanted."""
    state = ledger.state(deferred.message_id, deferred.recipient, deferred.destination)
    if state is None:
        return False
    if not isinstance(state, Deferred):
        return True  # delivered or bounced meanwhile
    return state.attempt > deferred.attempt  # tried again since (forced retry)


class RetryService:
    def __init__(self, settings: Settings, instance: str = "0") -> None:
        self.settings = settings
        self.topics = Topics.from_settings(settings)
        prefix = settings.kafka.topic_prefix
        self.group_id = f"{prefix}.retry"
        self.transactional_id = f"{prefix}.retry.{instance}"
        self.ledger = Ledger(settings.kafka, self.topics.ledger, "retry")
        self._lock = asyncio.Lock()
        self.republished = 0
        self.dropped = 0

    async def run(self, stop: asyncio.Event, on_ready: Callable[[], None] | None = None) -> None:
        k = self.settings.kafka
        producer = make_transactional_producer(k, self.transactional_id)
        consumer = make_consumer(k, self.group_id, "retry")
        try:
            await self.ledger.start()
            await producer.start()
            consumer.subscribe([self.topics.retry(d) for d in self.topics.retry_delays],
                               listener=DrainOnRevoke(self._lock))
            await consumer.start()
            log.info("retry service watching %s", ", ".join(self.topics.retry(d) for d in self.topics.retry_delays))
            if on_ready:
                on_ready()
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=self.settings.runner.poll_timeout_ms)
                if batch:
                    async with self._lock:
                        await self._process_batch(consumer, producer, batch)
        finally:
            await consumer.stop()
            await producer.stop()
            await self.ledger.close()

    async def _process_batch(self, consumer, producer, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        await self.ledger.catch_up()
        offsets: dict[TopicPartition, int] = {}
        now = time.time()
        async with producer.transaction():
            for tp, records in batch.items():
                for record in records:
                    deferred = self._decode(record)
                    if deferred is not None:
                        due = epoch_from_iso(deferred.next_attempt_time or deferred.time)
                        if due > now:
                            hold_partition(consumer, tp, record.offset, due - now)
                            break
                        await self._republish(producer, deferred)
                    offsets[tp] = record.offset + 1
            if offsets:
                await producer.send_offsets_to_transaction(offsets, self.group_id)

    def _decode(self, record: ConsumerRecord) -> Deferred | None:
        try:
            event = decode_event(record.value or b"", expect=(Deferred,))
        except ValueError as exc:
            log.error("retry: dropping undecodable record %s[%d]@%d: %s", record.topic, record.partition,
                      record.offset, exc)
            return None
        assert isinstance(event, Deferred)
        if event.routed is None:
            log.error("retry: deferred %s has nothing to deliver; dropped", event.id)
            return None
        return event

    async def _republish(self, producer, deferred: Deferred) -> None:
        if is_stale(deferred, self.ledger):
            self.dropped += 1
            return
        routed: Routed = deferred.routed  # type: ignore[assignment]
        await producer.send(self.topics.routed(deferred.destination), encode_event(routed),
                            key=deferred.message_id.encode())
        self.republished += 1


async def run_retry_service(settings: Settings, stop: asyncio.Event, on_ready: Callable[[], None] | None = None,
                            instance: str = "0") -> RetryService:
    service = RetryService(settings, instance)
    await service.run(stop, on_ready)
    return service
