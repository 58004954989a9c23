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

from aiokafka.structs import ConsumerRecord

from pipeline.bus import Topics
from pipeline.hop import Hold, Output, PoisonMessage, TransactionalHop
from pipeline.settings import Settings
from pipeline.state.ledger import Ledger
from schemas.events import DecodeError, Deferred, decode_event, epoch_from_iso

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


class RetryService(TransactionalHop):
    def __init__(self, settings: Settings, instance: str = "0") -> None:
        self.topics = Topics.from_settings(settings)
        super().__init__(settings, "retry", [self.topics.retry(d) for d in self.topics.retry_delays], instance)
        self.ledger = Ledger(settings.kafka, self.topics.ledger, "retry")
        self.republished = 0
        self.dropped = 0

    async def start(self) -> None:
        await self.ledger.start()

    async def close(self) -> None:
        await self.ledger.close()

    async def before_batch(self) -> None:
        await self.ledger.catch_up()  # what the sinks recorded up to now decides staleness

    async def handle(self, record: ConsumerRecord) -> list[Output]:
        deferred = self._decode(record)
        wait = epoch_from_iso(deferred.next_attempt_time or deferred.time) - time.time()
        if wait > 0:
            raise Hold(wait)  # the partition waits; records behind it are due later still
        if is_stale(deferred, self.ledger):
            self.dropped += 1
            return []
        self.republished += 1
        return [Output(self.topics.routed(deferred.destination), deferred.message_id.encode(), deferred.routed)]

    def _decode(self, record: ConsumerRecord) -> Deferred:
        """The record's `deferred` event; a record that is none, or has nothing to deliver, is poison."""
        try:
            event = decode_event(record.value or b"", expect=(Deferred,))
        except DecodeError as exc:
            raise PoisonMessage("undecodable", str(exc)) from None
        assert isinstance(event, Deferred)
        if event.routed is None:
            raise PoisonMessage("nothing_to_deliver", f"deferred {event.id} carries no routed copy")
        return event


async def run_retry_service(settings: Settings, stop: asyncio.Event, on_ready: Callable[[], None] | None = None,
                            instance: str = "0") -> RetryService:
    service = RetryService(settings, instance)
    await service.run(stop, on_ready)
    return service
