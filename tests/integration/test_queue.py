"""`poststelle queue` and `queue retry` against the real broker, with a schedule of one hour:
a deferred delivery is listed, brought forward at once, and its scheduled retry becomes stale."""
from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord

from consumers.services.retry import RetryService
from pipeline.bus import Topics, ensure_topics
from pipeline.cli.queue import deferred_deliveries, queue_rows, retry_now
from pipeline.hop import Hold
from pipeline.cli.components import load_config
from pipeline.state.ledger import Ledger
from schemas.events import (
    BlobRef,
    Client,
    Deferred,
    Envelope,
    Received,
    Reply,
    Routed,
    decode_event,
    encode_event,
    iso_from_epoch,
)
from schemas.ids import new_id


def _deferred(attempt: int, due: float) -> Deferred:
    message = Received(message_id=new_id(), envelope=Envelope(mail_from="a@example.org", rcpt_to=["max@school.test"]),
                       client=Client(ip="127.0.0.1", port=1), blob=BlobRef(sha256="0" * 64, size=1))
    routed = Routed(message_id=message.message_id, destination="lmtp", recipients=["max@school.test"],
                    message=message, attempt=attempt)
    return Deferred(message_id=message.message_id, destination="lmtp", recipient="max@school.test", attempt=attempt,
                    reply=Reply(code=452, enhanced="4.2.2", text="Quota exceeded"),
                    next_attempt_time=iso_from_epoch(due), routed=routed)


def _record(event: Deferred) -> ConsumerRecord:
    return ConsumerRecord(topic="t", partition=0, offset=0, timestamp=0, timestamp_type=0, key=None,
                          value=encode_event(event), checksum=None, serialized_key_size=0,
                          serialized_value_size=0, headers=())


def test_queue_lists_brings_forward_and_the_scheduled_retry_turns_stale(stack):
    prefix = f"scratch{uuid.uuid4().hex[:8]}"
    settings = load_config(None, environ={"POSTSTELLE_KAFKA__BOOTSTRAP": stack.bootstrap,
                                            "POSTSTELLE_KAFKA__TOPIC_PREFIX": prefix,
                                            "POSTSTELLE_DELIVERY__RETRY_SCHEDULE": "1h"})
    topics = Topics.from_settings(settings)
    waiting = _deferred(attempt=1, due=time.time() + 3600)

    async def scenario():
        await ensure_topics(settings)
        ledger = Ledger(settings.kafka, topics.ledger, "test")
        await ledger.start()
        await ledger.record(waiting)
        await ledger.close()

        listed = await deferred_deliveries(settings)
        forwarded = await retry_now(settings, {waiting.message_id})

        consumer = AIOKafkaConsumer(topics.routed("lmtp"), bootstrap_servers=stack.bootstrap,
                                    auto_offset_reset="earliest")
        await consumer.start()
        try:
            batch = await consumer.getmany(timeout_ms=10_000)
            routed = [decode_event(r.value) for records in batch.values() for r in records]
        finally:
            await consumer.stop()

        service = RetryService(settings)
        await service.start()
        try:
            held = None
            try:
                await service.handle(_record(waiting))
            except Hold as hold:
                held = hold.delay
            # the forced attempt failed again: the ledger now holds attempt 2
            await service.ledger.record(dataclasses.replace(waiting, id=new_id(), attempt=2))
            due_now = dataclasses.replace(waiting, next_attempt_time=iso_from_epoch(time.time() - 1))
            stale_outputs = await service.handle(_record(due_now))
        finally:
            await service.close()
        return listed, forwarded, routed, held, stale_outputs

    listed, forwarded, routed, held, stale_outputs = asyncio.run(scenario())
    assert [d.message_id for d in listed] == [waiting.message_id]
    columns, rows = queue_rows(listed)
    assert rows[0][columns.index("attempts")] == 1 and "452 4.2.2" in rows[0][columns.index("last_reply")]
    assert [d.message_id for d in forwarded] == [waiting.message_id]
    assert [r.message_id for r in routed] == [waiting.message_id], "brought forward to the sink's topic"
    assert held is not None and 3500 < held <= 3600, "not due: the partition is held, not skipped"
    assert stale_outputs == [], "a newer attempt exists: the scheduled retry is dropped"
