"""The stage runner against the real broker: temporary failures are retried, never skipped."""
from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from pipeline.bus import Topics, ensure_topics
from pipeline.config import load_settings
from pipeline.registry import register
from pipeline.runner import StageRunner
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


# ---- a stage that hangs: the per-record timeout ----------------------------------------------------


def test_a_stage_that_hangs_past_its_timeout_is_retried_and_other_partitions_go_on(stack):
    """The probe hangs (sleeps 30 s) the first 3 times it sees one message; its timeout is PROBE_TIMEOUT (3 s).

    Each hung attempt is given up after the timeout and retried later (a temporary failure), while the
    records of the other partitions are processed in between; the hung message is delivered in the end."""
    from concurrent.futures import ThreadPoolExecutor

    from aiokafka.partitioner import DefaultPartitioner

    from tests.integration.conftest import PROBE_TIMEOUT, mail_with, new_test_id, send_data

    rcpt = "tom.becker@school.test"
    partitions = list(range(4))  # kafka.partitions of the local config

    def partition_of(message_id: str) -> int:
        return DefaultPartitioner()(message_id.encode(), partitions, partitions)

    def seen(test_id: str) -> bool:
        return any(f"X-Test-Id: {test_id}".encode() in raw for raw in stack.messages(rcpt))

    sleeper = new_test_id()
    started = time.monotonic()
    slow = send_data(stack, mail_with(sleeper, [rcpt], {"X-Probe-Sleep": "30 3"}), [rcpt])
    assert slow.code == 250
    ids = [new_test_id() for _ in range(8)]
    with ThreadPoolExecutor(len(ids)) as pool:  # concurrently, as MTAs deliver: each DATA waits for its verdict
        replies = list(pool.map(lambda t: send_data(stack, mail_with(t, [rcpt], {}), [rcpt]), ids))
    assert all(r.code == 250 for r in replies)
    others = {t: partition_of(r.message_id) for t, r in zip(ids, replies)}
    arrived: dict[str, float] = {}

    def all_arrived() -> bool:
        for test_id in [sleeper, *others]:
            if test_id not in arrived and seen(test_id):
                arrived[test_id] = time.monotonic() - started
        return len(arrived) == len(others) + 1

    stack.wait_for(all_arrived, timeout=90, interval=0.2, what="every message delivered")
    assert arrived[sleeper] < 30, "a hung attempt was given up after the timeout, not waited out"
    elsewhere = [t for t, p in others.items() if p != partition_of(slow.message_id)]
    assert elsewhere, "no message landed on another partition"
    assert all(arrived[t] < arrived[sleeper] for t in elsewhere), arrived
    log = (stack.home / "log" / "stage-probe.log").read_text()
    assert log.count(f"no answer within {PROBE_TIMEOUT:g}s") >= 3
