"""The stage runner: consume → process → produce, one Kafka transaction per batch.

For each batch the outputs of every record and the consumer offsets past them are committed in
one transaction (`send_offsets_to_transaction`), so a stage hop is exactly-once: after a crash the
open transaction is aborted (the restarted process fences it with the same transactional id) and
the batch is processed again from the last committed offset.

- Temporary failure: the partition is rewound to the failed record and paused for a growing
  backoff; records before it in the batch are committed, nothing after it is skipped.
- Poison record (too large, undecodable, nested too deep, looping, or the stage raised): a
  `deadlettered` event with the reason goes to the dead-letter topic and the offset moves on.
- Rebalance: revocation waits until the batch in flight is committed (the listener takes the
  same lock as the batch), so partitions change hands with nothing half-done.
"""
from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from pipeline.blobstore import FileBlobStore
from pipeline.bus import DrainOnRevoke, PartitionBackoff, Topics, hold_partition, make_consumer, make_transactional_producer
from pipeline.settings import Settings
from pipeline.stage import Outcome, PoisonMessage, Stage, StageContext, TemporaryFailure, Work
from schemas.codec import DecodeError
from schemas.events import (
    Deadlettered,
    Event,
    Quarantined,
    Received,
    Rejected,
    Result,
    Routed,
    StageResult,
    decode_event,
    encode_event,
)

__all__ = ["StageRunner", "Output", "run_stage"]

log = logging.getLogger(__name__)
PAYLOAD_EXCERPT = 4096  # bytes of a poison record kept in its dead-letter event

TEMPORARY_ERRORS = (TemporaryFailure, TimeoutError, ConnectionError)


@dataclass(frozen=True, slots=True)
class Output:
    topic: str
    key: bytes
    event: Event


class StageRunner:
    def __init__(self, settings: Settings, stage: Stage, instance: str = "0") -> None:
        self.settings = settings
        self.stage = stage
        self.topics = Topics.from_settings(settings)
        self.input_topic = self.topics.stage_input(stage.name)
        self.group_id = f"{settings.kafka.topic_prefix}.{stage.name}"
        self.transactional_id = f"{self.group_id}.{instance}"
        self.backoff = PartitionBackoff(settings.runner.tempfail_backoff_initial, settings.runner.tempfail_backoff_max)
        self._lock = asyncio.Lock()
        self.processed = 0
        self.deadlettered = 0

    # -- record → outputs ---------------------------------------------------------------------

    def decode(self, record: ConsumerRecord) -> Work:
        """The stage's input, or `PoisonMessage` when the record cannot be one."""
        limits = self.settings.runner
        if record.value is None:
            raise PoisonMessage("undecodable", "record without a value")
        if len(record.value) > limits.max_event_bytes:
            raise PoisonMessage("too_large", f"record of {len(record.value)} bytes")
        try:
            event = decode_event(record.value, expect=(Received, StageResult))
        except DecodeError as exc:
            reason = "too_deep" if "deeper" in str(exc) else "undecodable"
            raise PoisonMessage(reason, str(exc)) from None
        if isinstance(event, Received):
            return Work(message=event)
        assert isinstance(event, StageResult)
        history = [*event.history, event.result]
        if len(history) > limits.max_hops:
            raise PoisonMessage("looping", f"passed {len(history)} stages")
        return Work(message=event.message, history=history, edits=list(event.edits))

    def outputs_for(self, work: Work, outcome: Outcome, duration_ms: float) -> list[Output]:
        name = self.stage.name
        message = work.message
        key = message.message_id.encode()
        result = Result(stage=name, verdict=outcome.verdict, score=outcome.score,
                        details=outcome.details, duration_ms=round(duration_ms, 3))
        results = [*work.history, result]
        edits = [*work.edits, *outcome.edits]
        recipients = list(message.envelope.rcpt_to)
        if outcome.reject:
            event: Event = Rejected(message_id=message.message_id, stage=name, reason=outcome.reject,
                                    recipients=recipients, message=message, results=results)
            return [Output(self.topics.rejected, key, event)]
        if outcome.quarantine:
            event = Quarantined(message_id=message.message_id, stage=name, reason=outcome.quarantine,
                                recipients=recipients, message=message, results=results)
            return [Output(self.topics.quarantine, key, event)]
        passed = StageResult(message_id=message.message_id, result=result, message=message,
                             history=list(work.history), edits=edits)
        outputs = [Output(self.topics.checked(name), key, passed)]
        for destination, rcpts in outcome.routes.items():
            routed = Routed(message_id=message.message_id, destination=destination, recipients=rcpts,
                            message=message, results=results, edits=edits)
            outputs.append(Output(self.topics.routed(destination), key, routed))
        return outputs

    async def handle(self, record: ConsumerRecord) -> list[Output]:
        """Outputs for one record; raises only the temporary errors (the record is retried)."""
        try:
            work = self.decode(record)
            started = time.perf_counter()
            outcome = await self.stage.process(work)
            outputs = self.outputs_for(work, outcome, (time.perf_counter() - started) * 1000)
        except TEMPORARY_ERRORS:
            raise
        except PoisonMessage as exc:
            return [self._deadletter(record, exc.reason, str(exc))]
        except Exception as exc:  # a bug or a message the stage chokes on: a person must look
            log.exception("stage %s failed on %s[%d]@%d", self.stage.name, record.topic,
                          record.partition, record.offset)
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            return [self._deadletter(record, "exception", detail)]
        self.processed += 1
        return outputs

    def _deadletter(self, record: ConsumerRecord, reason: str, error: str) -> Output:
        self.deadlettered += 1
        payload = (record.value or b"")[:PAYLOAD_EXCERPT]
        log.warning("dead-lettering %s[%d]@%d: %s: %s", record.topic, record.partition, record.offset,
                    reason, error)
        event = Deadlettered(
            message_id=_message_id_of(record.value),
            consumer=self.stage.name,
            source_topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            reason=reason,
            error=error[:2000],
            payload=payload.decode("utf-8", "replace"),
        )
        return Output(self.topics.deadletter, record.key or b"", event)

    # -- the loop -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, on_ready: Callable[[], None] | None = None) -> None:
        k = self.settings.kafka
        producer = make_transactional_producer(k, self.transactional_id)
        consumer = make_consumer(k, self.group_id, self.stage.name, max_poll_records=self.settings.runner.batch_size)
        await producer.start()
        try:
            consumer.subscribe([self.input_topic], listener=DrainOnRevoke(self._lock))
            await consumer.start()
            await self.stage.start()
            log.info("stage %s consuming %s as %s", self.stage.name, self.input_topic, self.group_id)
            if on_ready:
                on_ready()
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=self.settings.runner.poll_timeout_ms,
                                               max_records=self.settings.runner.batch_size)
                if batch:
                    async with self._lock:
                        await self._process_batch(consumer, producer, batch)
        finally:
            await self.stage.close()
            await consumer.stop()
            await producer.stop()

    async def _process_batch(self, consumer, producer, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        offsets: dict[TopicPartition, int] = {}
        async with producer.transaction():
            for tp, records in batch.items():
                for record in records:
                    try:
                        outputs = await self.handle(record)
                    except TEMPORARY_ERRORS as exc:
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
        log.warning("stage %s: temporary failure at %s[%d]@%d (%s: %s); retrying in %.1fs",
                    self.stage.name, tp.topic, tp.partition, record.offset, type(exc).__name__, exc, delay)
        hold_partition(consumer, tp, record.offset, delay)


def _message_id_of(payload: bytes | None) -> str:
    try:
        data = orjson.loads(payload or b"")
        value = data.get("message_id", "") if isinstance(data, dict) else ""
        return value if isinstance(value, str) else ""
    except orjson.JSONDecodeError:
        return ""


async def run_stage(settings: Settings, name: str, stop: asyncio.Event,
                    on_ready: Callable[[], None] | None = None, instance: str = "0") -> StageRunner:
    from pipeline.registry import get_stage

    cls = get_stage(name)
    context = StageContext(settings=settings, blobs=FileBlobStore(settings.home / "blobs"))
    stage = cls(settings.stage_settings(name), context)
    runner = StageRunner(settings, stage, instance=instance)
    await runner.run(stop, on_ready)
    return runner
