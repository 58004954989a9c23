"""Delivery sinks: consume `routed` events for one destination and hand them to the next hop.

Per batch of up to `inflight` routed events, deliveries run concurrently through a
`DeliveryTransport`. Each recipient's reply becomes a `delivery_attempt` event plus `delivered`
(2xx), `deferred` (4xx) or `bounced` (5xx). The recipient's new state is written to the ledger as
soon as the next hop answered (write-ahead); the delivery events and the consumer offsets are
committed in one transaction at the end of the batch. Recipients whose ledger state is final are
not delivered again: their recorded event is re-emitted (same id, so analytics counts it once).
The LMTP, smarthost and MX sinks are this class with different transports. The sinks whose mail
leaves the site (smarthost, MX) also get a `DkimSigner`: it signs the rendered message, so the
signature covers exactly the bytes that are sent.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from consumers.sinks.transport import Delivery, DeliveryTransport
from pipeline.blobstore import BlobNotFound, BlobStore
from pipeline.bus import Topics
from pipeline.deadletter import deadletter_event
from pipeline.exactly_once import ExactlyOnceLoop
from pipeline.mail.dkim_sign import DkimSigner
from pipeline.mail.render import PartNotFound, envelope_sender_of, render
from pipeline.metrics import DELIVERIES, HopMetrics
from pipeline.settings import Settings
from pipeline.state.ledger import Ledger
from schemas.events import (
    Bounced,
    Deadlettered,
    DecodeError,
    Deferred,
    Delivered,
    DeliveryAttempt,
    Event,
    Reply,
    Routed,
    decode_event,
    encode_event,
    epoch_from_iso,
    iso_from_epoch,
    now_iso,
)
from schemas.ids import new_id

__all__ = ["DeliverySink", "SinkStats", "delay_notice_due"]

log = logging.getLogger(__name__)
UNREACHABLE = Reply(code=451, enhanced="4.4.1", text="next hop not reachable")
MISSING_BLOB = Reply(code=451, enhanced="4.3.0", text="message content not available")


def delay_notice_due(routed: Routed, now: float, warning: float) -> bool:
    """Whether a deferral of `routed` at `now` is the one whose sender is told of the delay.

    It is when the message (accepted at `routed.message.time`) is at least `warning` seconds old now
    and was not at the attempt before: a retried copy's `time` is that attempt's, a first attempt
    has none before it. Attempts of one delivery follow each other, so one deferral passes this.
    `warning` 0: never.
    """
    if warning <= 0:
        return False
    accepted = epoch_from_iso(routed.message.time)
    if now - accepted < warning:
        return False
    return routed.attempt == 0 or epoch_from_iso(routed.time) - accepted < warning


@dataclass(slots=True)
class SinkStats:
    delivered: int = 0
    deferred: int = 0
    bounced: int = 0
    skipped_by_ledger: int = 0


class DeliverySink:
    """Consume routed events for one destination and deliver them through a transport."""

    def __init__(self, settings: Settings, destination: str, transport: DeliveryTransport,
                 blobs: BlobStore, inflight: int, instance: str = "0", signer: DkimSigner | None = None) -> None:
        self.settings = settings
        self.signer = signer
        self.destination = destination
        self.transport = transport
        self.blobs = blobs
        self.inflight = inflight
        self.topics = Topics.from_settings(settings)
        self.group_id = f"{settings.kafka.topic_prefix}.sink.{destination}"
        self.transactional_id = f"{self.group_id}.{instance}"
        self.delivery = settings.delivery
        self.ledger = Ledger(settings.kafka, self.topics.ledger, f"sink-{destination}")
        self.stats = SinkStats()
        self.metrics = HopMetrics(f"sink:{destination}", self.group_id, settings.metrics.lag_interval)
        self._lock = asyncio.Lock()

    async def deliver(self, routed: Routed) -> list[Event]:
        """Deliver one routed event; returns the delivery events to commit."""
        events: list[Event] = []
        pending: list[str] = []
        for rcpt in routed.recipients:
            known = self.ledger.final(routed.message_id, rcpt, self.destination)
            if known is not None:
                self.stats.skipped_by_ledger += 1
                events.append(known)
            else:
                pending.append(rcpt)
        if not pending:
            return events
        attempt = routed.attempt + 1
        started = time.perf_counter()
        replies = await self._send(routed, pending)
        duration = (time.perf_counter() - started) * 1000
        for rcpt in pending:
            reply = replies.get(rcpt, UNREACHABLE)
            events.append(DeliveryAttempt(message_id=routed.message_id, destination=self.destination,
                                          recipient=rcpt, attempt=attempt, reply=reply,
                                          duration_ms=round(duration, 3)))
            events.append(await self._final_or_deferred(routed, rcpt, attempt, reply))
        return events

    async def _send(self, routed: Routed, recipients: list[str]) -> dict[str, Reply]:
        try:
            raw = await asyncio.to_thread(self.blobs.get, routed.message.blob)
        except BlobNotFound:
            log.error("message %s: blob %s missing", routed.message_id, routed.message.blob.sha256)
            return dict.fromkeys(recipients, MISSING_BLOB)
        envelope = routed.message.envelope
        mail_from = envelope_sender_of(routed)
        data = render(raw, routed.edits)
        if self.signer:  # after every edit: the signature covers what leaves
            data = self.signer.sign(data, mail_from)
        delivery = Delivery(mail_from=mail_from, recipients=recipients, data=data, smtputf8=envelope.smtputf8,
                            body_8bit=envelope.body == "8BITMIME")
        try:
            return await self.transport.deliver(delivery)
        except (OSError, asyncio.TimeoutError) as exc:
            log.warning("message %s: %s unreachable: %s", routed.message_id, self.destination, exc)
            return dict.fromkeys(recipients, UNREACHABLE)

    async def _final_or_deferred(self, routed: Routed, rcpt: str, attempt: int, reply: Reply) -> Event:
        """The recipient's new state after an attempt, written to the ledger before it is returned."""
        common = dict(message_id=routed.message_id, destination=self.destination, recipient=rcpt,
                      attempt=attempt, reply=reply)
        # the copy to deliver again: an event of its own (new id), for this recipient only
        single = dataclasses.replace(routed, id=new_id(), time=now_iso(), recipients=[rcpt], attempt=attempt)
        event: Delivered | Bounced | Deferred
        if 200 <= reply.code < 300:
            event = Delivered(**common, received_time=routed.message.time)
            self.stats.delivered += 1
        elif 500 <= reply.code < 600:
            event = Bounced(**common, reason="permanent", mail_from=envelope_sender_of(routed),
                            routed=single)
            self.stats.bounced += 1
        elif self._expired(routed):
            event = Bounced(**common, reason="expired", mail_from=envelope_sender_of(routed),
                            routed=single)
            self.stats.bounced += 1
        else:
            now = time.time()
            event = Deferred(**common, next_attempt_time=iso_from_epoch(now + self.delivery.delay_after(attempt)),
                             routed=single,
                             delay_notice=delay_notice_due(routed, now, self.delivery.delay_warning_seconds))
            self.stats.deferred += 1
        await self.ledger.record(event)  # write-ahead: before the offsets move
        DELIVERIES.labels(self.destination, event.type).inc()
        return event

    def _expired(self, routed: Routed) -> bool:
        """Past the lifetime (Postfix's maximal_queue_lifetime): a temporary failure becomes final."""
        return time.time() - epoch_from_iso(routed.message.time) >= self.delivery.lifetime_seconds

    def outputs_for(self, event: Event, key: bytes) -> list[tuple[str, bytes]]:
        """(topic, key) pairs an event goes to. Retries are keyed by recipient, so one recipient's
        deferred deliveries stay in one partition, in order."""
        if isinstance(event, Deadlettered):
            return [(self.topics.deadletter, key)]
        if isinstance(event, Deferred):
            retry = self.topics.retry(self.delivery.delay_name_after(event.attempt))
            return [(self.topics.delivery, key), (retry, event.recipient.encode())]
        return [(self.topics.delivery, key)]

    # -- loop ---------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, on_ready: Callable[[], None] | None = None) -> None:
        loop = ExactlyOnceLoop(self.settings.kafka, name=f"sink-{self.destination}", group_id=self.group_id,
                               transactional_id=self.transactional_id,
                               topics=[self.topics.routed(self.destination)], max_records=self.inflight,
                               poll_timeout_ms=self.settings.runner.poll_timeout_ms, lock=self._lock,
                               on_assigned=self.ledger.catch_up)
        try:
            await self.ledger.start()
            await loop.open()
            log.info("sink %s delivering, %d ledger entries", self.destination, len(self.ledger.entries))
            if on_ready:
                on_ready()
            async with self.metrics.lag_of(lambda: loop.consumer):
                await loop.consume(stop, lambda batch: self._process_batch(loop.producer, batch))
        finally:
            await loop.close()
            await self.ledger.close()
            close = getattr(self.transport, "close", None)  # kept connections (SmtpClientTransport)
            if close is not None:
                await close()

    async def _process_batch(self, producer, batch: dict[TopicPartition, list]) -> None:
        records = [r for rs in batch.values() for r in rs]
        copies = [self._decode(r) for r in records]
        if any(isinstance(c, Routed) and c.attempt > 0 for c in copies):
            # a retry: what was written to the ledger since it was deferred (`poststelle queue delete`,
            # a forced attempt's result) decides whether it is still wanted
            await self.ledger.catch_up()
        results = await asyncio.gather(*(self._deliver_record(r, c) for r, c in zip(records, copies)))
        async with producer.transaction():
            for record, events in zip(records, results):
                for event in events:
                    for topic, key in self.outputs_for(event, record.key):
                        await producer.send(topic, encode_event(event), key=key)
            offsets = {tp: rs[-1].offset + 1 for tp, rs in batch.items()}
            await producer.send_offsets_to_transaction(offsets, self.group_id)

    @staticmethod
    def _decode(record) -> Routed | DecodeError:
        try:
            return decode_event(record.value or b"", expect=(Routed,))  # type: ignore[return-value]
        except DecodeError as exc:
            return exc

    async def _deliver_record(self, record, copy: Routed | DecodeError | None = None) -> list[Event]:
        """The delivery events of one record (`copy`: its decoded event, if already known), or its dead
        letter when it can never be delivered.

        Undecodable records and copies that cannot be rendered (a `replace_part` whose part is not in
        the message, ...) are dead-lettered whole, and the sink goes on; broker trouble is not the
        record's fault and propagates.
        """
        with self.metrics.handling():
            return await self._events_of(record, self._decode(record) if copy is None else copy)

    async def _events_of(self, record, routed: Routed | DecodeError) -> list[Event]:
        if isinstance(routed, DecodeError):
            return [await self._deadletter(record, "undecodable", str(routed))]
        try:
            return await self.deliver(routed)
        except KafkaError:
            raise
        except Exception as exc:  # PartNotFound, or a bug: the record must not be lost or retried for ever
            log.exception("sink %s: cannot deliver %s[%d]@%d", self.destination, record.topic, record.partition,
                          record.offset)
            reason = "unrenderable" if isinstance(exc, PartNotFound) else "exception"
            return [await self._deadletter(record, reason, "".join(traceback.format_exception_only(type(exc), exc)))]

    async def _deadletter(self, record, reason: str, error: str) -> Deadlettered:
        self.metrics.deadlettered(reason)
        log.error("sink %s: dead-lettering %s[%d]@%d: %s: %s", self.destination, record.topic, record.partition,
                  record.offset, reason, error.strip())
        return await asyncio.to_thread(deadletter_event, record, f"sink.{self.destination}", reason, error.strip(),
                                       self.blobs)
