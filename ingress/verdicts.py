"""SMTP-time verdicts: the ingress waits, after storing a message, for the pipeline's outcome.

Stages write a small `outcome` event to ``poststelle.outcomes`` whenever they end a message's way
for some recipients (rejected, quarantined, or routed to a sink). Every ingress process follows
that topic from its end (no consumer group, all partitions) and wakes the DATA command waiting for
that message. So a virus, a site block-list hit or a DMARC reject is answered ``554 5.7.1`` to the
sending MTA, which then owns the bounce; nothing is ever bounced to a possibly forged sender.

Decisions are per recipient, the DATA reply is one for the whole transaction: ``554`` only when
every recipient was rejected. When the wait runs out, or when some recipients were rejected and
others not, the ingress answers ``250`` and first records that (`accepted_early`); the verdict
service (consumers/services/verdict.py) then turns those rejections into quarantine for the rejected
recipients only.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from pipeline.broker import watch
from pipeline.bus import make_consumer, topic_partitions
from pipeline.settings import KafkaSettings
from schemas.events import DecodeError, MessageOutcome, decode_event

__all__ = ["Pending", "OutcomeFollower", "refusal_text", "first_of"]

log = logging.getLogger(__name__)

MAX_REASON = 200  # characters of a stage's reason shown to the client


@dataclass
class Pending:
    """One message waiting for its verdict: done once every recipient has an outcome.

    Outcomes name recipients: `routed`, `rejected` and `quarantined` end their way; `replaced` swaps
    one recipient for the addresses it became (a group's members), whose own outcomes follow. The
    outcomes of one message arrive in the order the stages wrote them (one partition, keyed by the
    message id), so a replacement is always seen before the outcomes of its addresses.
    """

    recipients: set[str]
    outcomes: list[MessageOutcome] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    decided: set[str] = field(default_factory=set)

    def add(self, outcome: MessageOutcome) -> None:
        if outcome.disposition == "replaced":
            for recipient in outcome.recipients:
                if recipient in self.recipients:
                    self.recipients.discard(recipient)
                    self.recipients.update(a for a in outcome.into if a not in self.decided)
        else:
            self.outcomes.append(outcome)
            self.recipients.difference_update(outcome.recipients)
            self.decided.update(outcome.recipients)
        if not self.recipients:
            self.done.set()

    @property
    def rejection(self) -> MessageOutcome | None:
        """The first rejection, when the outcome is complete and every recipient's way ended in one."""
        if not self.done.is_set() or not self.outcomes:
            return None
        return self.outcomes[0] if all(o.disposition == "rejected" for o in self.outcomes) else None

    @property
    def partly_rejected(self) -> bool:
        """Some recipients were rejected, others not: the client hears 250, the rejected ones are quarantined."""
        return any(o.disposition == "rejected" for o in self.outcomes) and self.rejection is None


def refusal_text(outcome: MessageOutcome) -> str:
    """The DATA reply for a rejected message: the stage and its reason, on one line, bounded."""
    reason = " ".join(outcome.reason.split())[:MAX_REASON] or "policy"
    return f"554 5.7.1 Message refused by {outcome.stage} check: {reason}"


class OutcomeFollower:
    """Reads ``poststelle.outcomes`` from its end and wakes the messages waiting for them."""

    def __init__(self, kafka: KafkaSettings, topic: str, client_id: str = "ingress-outcomes") -> None:
        self.topic = topic
        self._kafka, self._client_id = kafka, client_id
        self._consumer = make_consumer(kafka, None, client_id)
        self._waiting: dict[str, Pending] = {}
        self._task: asyncio.Task | None = None
        self.ready = False  # following the topic; when not, nobody waits

    async def start(self) -> None:
        """Start following; returns once positioned at the end of every partition."""
        await self._consumer.start()
        tps = await topic_partitions(self._consumer, self.topic)
        if not tps:
            raise ConnectionError(f"topic {self.topic} has no partitions (not created yet?)")
        self._consumer.assign(tps)
        await self._consumer.seek_to_end(*tps)
        for tp in tps:  # resolve the end offsets now, so nothing written from here on is missed
            await self._consumer.position(tp)
        self._task = asyncio.create_task(self._follow(), name="outcome-follower")
        self.ready = True

    def expect(self, message_id: str, recipients: list[str]) -> Pending:
        """Register interest before the message is persisted (its outcome cannot come earlier)."""
        pending = Pending(recipients=set(recipients))
        self._waiting[message_id] = pending
        return pending

    def forget(self, message_id: str) -> None:
        self._waiting.pop(message_id, None)

    async def _follow(self) -> None:
        while True:
            # broker trouble: aiokafka reconnects; waiters time out meanwhile
            batch = await watch().retry(self._client_id, lambda: self._consumer.getmany(timeout_ms=1000),
                                        errors=(Exception,))
            for records in batch.values():
                for record in records:
                    self._apply(record.value)

    def _apply(self, value: bytes | None) -> None:
        try:
            outcome = decode_event(value or b"", expect=(MessageOutcome,))
        except DecodeError as exc:
            log.warning("ignoring an undecodable record on %s: %s", self.topic, exc)
            return
        assert isinstance(outcome, MessageOutcome)
        pending = self._waiting.get(outcome.message_id)
        if pending is not None:
            pending.add(outcome)

    async def reset(self) -> None:
        """After a failed `start`: drop the consumer and make a fresh one for the next try."""
        await self._stop_consumer()
        self._consumer = make_consumer(self._kafka, None, self._client_id)

    async def close(self) -> None:
        self.ready = False
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._stop_consumer()

    async def _stop_consumer(self) -> None:
        try:
            await asyncio.wait_for(self._consumer.stop(), 5.0)
        except Exception as exc:
            log.debug("outcome follower stop: %s", exc)


async def first_of(*events: asyncio.Event, timeout: float) -> None:
    """Return when one of `events` is set, or after `timeout` seconds by the monotonic clock.

    Timers of uvloop have millisecond granularity and can fire a fraction of a millisecond early;
    the loop waits out the rest, so a wait never ends short of what it promised.
    """
    deadline = time.monotonic() + timeout
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        while not any(e.is_set() for e in events):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            await asyncio.wait(waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
