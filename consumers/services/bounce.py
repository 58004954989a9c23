"""The bounce service: `bounced` deliveries become DSNs to their senders (RFC 3464), and so do delays.

The bounce service is a consumer group (`<prefix>.bounce`) on the delivery topic. For each
`bounced` event, and each `deferred` event the sink marked `delay_notice` (the delivery passed
`delivery.delay_warning`: the sender is told once that it is still being tried), it decides whether
a DSN may be sent at all (`dsn_refusal`), builds the DSN (`build_dsn`, `pipeline.mail.dsn`), stores
it in the blob store and produces a `received` event for it: the DSN then goes through the whole
pipeline like any other message (route chooses the mailbox or the smarthost), from the null sender
`<>` to the original envelope sender.

Exactly once: the `received` events of a batch and the consumer offsets past it commit in one Kafka
transaction, as in the stage runner.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from aiokafka.structs import ConsumerRecord

from pipeline.blobstore import BlobNotFound, BlobStore, FileBlobStore
from pipeline.bus import Topics
from pipeline.hop import Output, PoisonMessage, TransactionalHop
from pipeline.mail.dsn import Reported, build_dsn, dsn_event_id, dsn_message_id, dsn_refusal, envelope_sender
from pipeline.mail.inject import DSN_LISTENER, inject_message
from pipeline.settings import Settings
from schemas.codec import DecodeError
from schemas.events import Bounced, Deferred, Received, decode_event, epoch_from_iso, iso_from_epoch

__all__ = ["BounceService", "BounceStats", "run_bounce_service"]

log = logging.getLogger(__name__)

TEMPORARY_ERRORS = (OSError, TimeoutError)  # blob store trouble: retry the record later


@dataclass(slots=True)
class BounceStats:
    sent: int = 0  # DSNs produced (failures and delays)
    delayed: int = 0  # of them, delay notices
    refused: int = 0  # events that may not get a DSN
    skipped: int = 0  # records that report nothing (not bounced, not a deferral with delay_notice)


class BounceService(TransactionalHop):
    """Turns `bounced` events on the delivery topic into DSN messages on the `received` topic."""

    temporary_errors = TEMPORARY_ERRORS
    # nearly every record on the delivery topic is not a bounce: let the broker gather them (a DSN
    # goes out at most half a second later) instead of a transaction for each one or two
    gather_ms = 500

    def __init__(self, settings: Settings, blobs: BlobStore, instance: str = "0") -> None:
        self.topics = Topics.from_settings(settings)
        super().__init__(settings, "bounce", [self.topics.delivery], instance)
        self.blobs = blobs
        self.reporting_mta = settings.ingress.hostname
        domain = (settings.ingress.local_domains or [self.reporting_mta])[0]
        self.postmaster = f"postmaster@{domain}"
        self.lifetime = settings.delivery.lifetime_seconds
        self.stats = BounceStats()

    # -- one event ------------------------------------------------------------------------------

    def _original(self, bounced: Reported) -> bytes:
        """The original message, or b"" when its blob is gone (raises OSError on storage trouble)."""
        assert bounced.routed is not None
        blob = bounced.routed.message.blob
        try:
            return self.blobs.get(blob)
        except BlobNotFound:
            log.warning("bounced %s: original blob %s missing; DSN without the headers part",
                        bounced.message_id, blob.sha256)
            return b""

    def dsn_event(self, bounced: Reported) -> Received | None:
        """The `received` event of the DSN for `bounced` (its blob stored), or None when refused.

        Blocking (blob store I/O). Raises OSError when the blob store cannot be read or written.
        """
        original = self._original(bounced) if bounced.routed is not None else b""
        reason = dsn_refusal(bounced, original)
        if reason is not None:
            log.info("bounced %s (%s, %s): no DSN: %s", bounced.message_id, bounced.recipient,
                     bounced.id, reason)
            self.stats.refused += 1
            return None
        retry_until = ""
        if isinstance(bounced, Deferred) and bounced.routed is not None:
            retry_until = iso_from_epoch(epoch_from_iso(bounced.routed.message.time) + self.lifetime)
        dsn = build_dsn(bounced, original, reporting_mta=self.reporting_mta, postmaster=self.postmaster,
                        retry_until=retry_until)
        sender = envelope_sender(bounced)
        event = inject_message(self.blobs, dsn, message_id=dsn_message_id(bounced),
                               event_id=dsn_event_id(bounced), mail_from="", rcpt_to=[sender],
                               hostname=self.reporting_mta, listener=DSN_LISTENER)
        log.info("%s %s (%s, %s): DSN %s to %s", bounced.type, bounced.message_id, bounced.recipient,
                 bounced.id, event.message_id, sender)
        self.stats.sent += 1
        self.stats.delayed += isinstance(bounced, Deferred)
        return event

    def _bounced_of(self, record: ConsumerRecord) -> Reported | None:
        """The record's `bounced` event, or its `deferred` event with `delay_notice`; None for the other
        events on the topic. Undecodable: poison."""
        try:
            data = orjson.loads(record.value or b"")
        except orjson.JSONDecodeError as exc:
            raise PoisonMessage("undecodable", f"not JSON: {exc}") from None
        kind = data.get("type") if isinstance(data, dict) else None
        if kind not in ("bounced", "deferred") or (kind == "deferred" and data.get("delay_notice") is not True):
            self.stats.skipped += 1
            return None
        try:
            event = decode_event(record.value or b"", expect=(Bounced, Deferred))
        except DecodeError as exc:
            raise PoisonMessage("undecodable", str(exc)) from None
        assert isinstance(event, (Bounced, Deferred))
        return event

    async def handle(self, record: ConsumerRecord) -> list[Output]:
        """Outputs for one record. Blob store trouble is retried (TEMPORARY_ERRORS); a DSN that cannot be
        built is dead-lettered by the hop."""
        bounced = self._bounced_of(record)
        if bounced is None:
            return []
        event = await asyncio.to_thread(self.dsn_event, bounced)
        if event is None:
            return []
        return [Output(self.topics.received, event.message_id.encode(), event)]


async def run_bounce_service(settings: Settings, stop: asyncio.Event,
                             on_ready: Callable[[], None] | None = None, instance: str = "0") -> None:
    """Run the bounce service until `stop` is set (the process `poststelle run bounce`)."""
    service = BounceService(settings, FileBlobStore(settings.home / "blobs"), instance=instance)
    await service.run(stop, on_ready)
