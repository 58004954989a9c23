"""The stage runner against the real broker: temporary failures are retried, never skipped."""
from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from pipeline.bus import Topics, ensure_topics
from pipeline.registry import register
from pipeline.runner import StageRunner
from pipeline.settings import load_settings
from pipeline.stage import Outcome, StageContext, TemporaryFailure, Work
from schemas.events import BlobRef, Client, Envelope, Received, StageResult, Verdict, decode_event, encode_event


@dataclass(frozen=True, slots=True)
class FlakySettings:
    failures: int = 3


@register
class FlakyStage:
    """Fails temporarily on the first message a few times (a scanner that is down), then passes."""

    name = "test_flaky"
    description = "test stage: temporary failures on the first message"
    Settings = FlakySettings

    def __init__(self, settings: FlakySettings, context: StageContext) -> None:
        self.remaining = settings.failures
        self.calls: list[str] = []

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def process(self, work: Work) -> Outcome:
        self.calls.append(work.message.message_id)
        if work.message.message_id.endswith("-0") and self.remaining > 0:
            self.remaining -= 1
            raise TemporaryFailure("scanner unavailable")
        return Outcome(verdict=Verdict.PASS)


def _received(message_id: str) -> Received:
    return Received(message_id=message_id,
                    envelope=Envelope(mail_from="a@example.org", rcpt_to=["max.mustermann@school.test"]),
                    client=Client(ip="127.0.0.1", port=1), blob=BlobRef(sha256="0" * 64, size=1))


def test_temporary_failures_are_retried_in_order_without_skipping(stack):
    prefix = f"scratch{uuid.uuid4().hex[:8]}"
    settings = load_settings(None, environ={
        "POSTSTELLE_KAFKA__BOOTSTRAP": stack.bootstrap,
        "POSTSTELLE_KAFKA__TOPIC_PREFIX": prefix,
        "POSTSTELLE_KAFKA__PARTITIONS": "1",
        "POSTSTELLE_TOPOLOGY__STAGES": "test_flaky",
        "POSTSTELLE_RUNNER__TEMPFAIL_BACKOFF_INITIAL": "0.2",
        "POSTSTELLE_RUNNER__TEMPFAIL_BACKOFF_MAX": "0.5",
    }, stage_types={"test_flaky": FlakySettings})
    topics = Topics.from_settings(settings)
    ids = [f"{prefix}-{i}" for i in range(5)]

    async def scenario() -> tuple[list[str], FlakyStage, float]:
        await ensure_topics(settings)
        stage = FlakyStage(FlakySettings(), StageContext(settings=settings, blobs=None))  # type: ignore[arg-type]
        runner = StageRunner(settings, stage)
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(runner.run(stop, ready.set))
        await asyncio.wait_for(ready.wait(), 60)
        producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap)
        await producer.start()
        started = time.monotonic()
        for message_id in ids:
            await producer.send_and_wait(topics.received, encode_event(_received(message_id)))
        await producer.stop()
        consumer = AIOKafkaConsumer(topics.checked("test_flaky"), bootstrap_servers=stack.bootstrap,
                                    auto_offset_reset="earliest", isolation_level="read_committed")
        await consumer.start()
        out: list[str] = []
        try:
            deadline = time.monotonic() + 60
            while len(out) < len(ids) and time.monotonic() < deadline:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        event = decode_event(record.value)
                        assert isinstance(event, StageResult)
                        out.append(event.message_id)
        finally:
            await consumer.stop()
            stop.set()
            await task
        return out, stage, time.monotonic() - started

    out, stage, took = asyncio.run(scenario())
    assert out == ids, "every message comes out once, in order, none skipped"
    assert stage.calls.count(ids[0]) == 4, "three temporary failures, then the pass"
    assert took >= 0.2 + 0.4, "the retries waited for the backoff"
