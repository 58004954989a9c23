"""The verdict service: a rejection the sender never heard of becomes quarantine.

A stage's rejection (virus, the site's block list, DMARC reject) is meant to reach the sending MTA
as ``554`` at DATA: the ingress waits for it (see `ingress.verdicts`). When the wait ran out first,
the ingress answered ``250`` and recorded that in the compacted topic
``poststelle.accepted_early``. Such a message must not vanish, and it must not be bounced to a
possibly forged sender either: it goes to quarantine, where a person can look at it and release it.

For each `rejected` event this service waits until the ingress has answered (the message's
`answer_by` time, plus a margin), reads what the ingresses recorded up to then, and writes a
`quarantined` event (reason ``late rejection: ...``) for the rejected recipients when the message was
accepted early: the wait ran out, or only some of its recipients were rejected (one DATA reply
answers for the whole transaction, so those recipients' rejection was never told). A message
whose ingress did not wait at all (`answer_by` empty: waiting disabled, or the outcome topic not
followed) is always such a case. Like the other hops, it writes in one Kafka transaction with its
offsets, so nothing is lost or doubled by a crash; an undecodable record is dead-lettered.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiokafka.structs import ConsumerRecord

from pipeline.broker import watch
from pipeline.bus import Topics
from pipeline.hop import Hold, Output, PoisonMessage, TransactionalHop
from pipeline.settings import Settings
from pipeline.tables import KafkaTransport
from schemas.events import DecodeError, MessageOutcome, Quarantined, Rejected, decode_event, epoch_from_iso

__all__ = ["VerdictService", "run_verdict_service", "LATE_MARGIN"]

log = logging.getLogger(__name__)

LATE_MARGIN = 3.0  # seconds after `answer_by` before the ingress's record is looked for


class VerdictService(TransactionalHop):
    def __init__(self, settings: Settings, instance: str = "0") -> None:
        self.topics = Topics.from_settings(settings)
        super().__init__(settings, "verdict", [self.topics.rejected], instance)
        self.accepted_early: set[str] = set()
        self._table = KafkaTransport(settings.kafka, {"accepted_early": self.topics.accepted_early},
                                     "verdict-accepted-early")
        self.quarantined = 0

    async def start(self) -> None:
        await watch().retry("verdict-accepted-early", self._table.open)

    async def close(self) -> None:
        await self._table.close()

    def _apply(self, _table: str, key: str, value: bytes | None) -> None:
        if value is None:
            self.accepted_early.discard(key)
        else:
            self.accepted_early.add(key)

    async def handle(self, record: ConsumerRecord) -> list[Output]:
        try:
            rejected = decode_event(record.value or b"", expect=(Rejected,))
        except DecodeError as exc:
            raise PoisonMessage("undecodable", str(exc)) from None
        assert isinstance(rejected, Rejected)
        answer_by = rejected.message.answer_by
        if answer_by:
            wait = epoch_from_iso(answer_by) + LATE_MARGIN - time.time()
            if wait > 0:
                raise Hold(wait)  # the ingress may still be answering; later records are due later
            await self._table.catch_up(self._apply)
            if rejected.message_id not in self.accepted_early:
                return []  # the sender was told 554: the rejection stands
        return self._quarantine(rejected)

    def _quarantine(self, rejected: Rejected) -> list[Output]:
        self.quarantined += 1
        reason = f"late rejection: {rejected.reason}"
        log.info("message %s: rejected by %s after the sender was told 250; quarantined", rejected.message_id,
                 rejected.stage)
        key = rejected.message_id.encode()
        held = Quarantined(message_id=rejected.message_id, stage=rejected.stage, reason=reason,
                           recipients=rejected.recipients, message=rejected.message, results=rejected.results,
                           replacements=rejected.replacements)
        outcome = MessageOutcome(message_id=rejected.message_id, stage=rejected.stage, disposition="quarantined",
                                 recipients=rejected.recipients, reason=reason)
        return [Output(self.topics.quarantine, key, held), Output(self.topics.outcomes, key, outcome)]


async def run_verdict_service(settings: Settings, stop: asyncio.Event, on_ready: Callable[[], None] | None = None,
                              instance: str = "0") -> VerdictService:
    service = VerdictService(settings, instance)
    await service.run(stop, on_ready)
    return service
