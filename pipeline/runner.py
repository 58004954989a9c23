"""The stage runner: a stage as a transactional hop (see `pipeline.hop`).

For each record of the stage's input topic: decode it (a poison record — too large, undecodable,
nested too deep, looping — becomes a `deadlettered` event with the reason), let the stage decide,
and turn its outcome into events: `stage_result` to the stage's output topic, or a terminal
`rejected` / `quarantined`, plus `routed` events when the stage routes, `held` events (parts held
back) to the quarantine topic and injected messages (notices) to the received topic. A stage exception is a
poison record too, except the temporary errors, which retry the record with backoff.
"""
from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Callable

import orjson
from aiokafka.structs import ConsumerRecord

from pipeline.blobstore import FileBlobStore
from pipeline.bus import Topics
from pipeline.hop import Output, TransactionalHop
from pipeline.registry import get_stage
from pipeline.settings import Settings
from pipeline.stage import Outcome, PoisonMessage, Stage, StageContext, TemporaryFailure, Work
from schemas.codec import DecodeError
from schemas.events import (
    Deadlettered,
    Event,
    MessageOutcome,
    Quarantined,
    Received,
    Rejected,
    Result,
    Routed,
    StageResult,
    decode_event,
)

__all__ = ["StageRunner", "Output", "run_stage"]

log = logging.getLogger(__name__)
PAYLOAD_EXCERPT = 4096  # bytes of a poison record kept in its dead-letter event

TEMPORARY_ERRORS = (TemporaryFailure, TimeoutError, ConnectionError)


class StageRunner(TransactionalHop):
    """Runs one stage: its input topic in, its results and terminal events out."""

    temporary_errors = TEMPORARY_ERRORS

    def __init__(self, settings: Settings, stage: Stage, instance: str = "0") -> None:
        self.topics = Topics.from_settings(settings)
        self.input_topic = self.topics.stage_input(stage.name)
        super().__init__(settings, stage.name, [self.input_topic], instance)
        self.stage = stage
        self.processed = 0
        self.deadlettered = 0

    async def start(self) -> None:
        await self.stage.start()

    async def close(self) -> None:
        await self.stage.close()

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
            return [Output(self.topics.rejected, key, event),
                    self._outcome(message, "rejected", recipients, outcome.reject)]
        if outcome.quarantine:
            event = Quarantined(message_id=message.message_id, stage=name, reason=outcome.quarantine,
                                recipients=recipients, message=message, results=results)
            return [Output(self.topics.quarantine, key, event),
                    self._outcome(message, "quarantined", recipients, outcome.quarantine)]
        passed = StageResult(message_id=message.message_id, result=result, message=message,
                             history=list(work.history), edits=edits)
        outputs = [Output(self.topics.checked(name), key, passed)]
        outputs.extend(Output(self.topics.quarantine, key, held) for held in outcome.held)
        outputs.extend(Output(self.topics.received, new.message_id.encode(), new) for new in outcome.inject)
        for destination, rcpts in outcome.routes.items():
            routed = Routed(message_id=message.message_id, destination=destination, recipients=rcpts,
                            message=message, results=results, edits=edits)
            outputs.append(Output(self.topics.routed(destination), key, routed))
        if outcome.routes:
            routed_rcpts = [r for rcpts in outcome.routes.values() for r in rcpts]
            outputs.append(self._outcome(message, "routed", routed_rcpts))
        return outputs

    def _outcome(self, message: Received, disposition: str, recipients: list[str], reason: str = "") -> Output:
        """The small terminal-outcome event the ingress waits for (see `ingress.verdicts`)."""
        event = MessageOutcome(message_id=message.message_id, stage=self.stage.name,
                               disposition=disposition, recipients=recipients, reason=reason)  # type: ignore[arg-type]
        return Output(self.topics.outcomes, message.message_id.encode(), event)

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


def _message_id_of(payload: bytes | None) -> str:
    try:
        data = orjson.loads(payload or b"")
        value = data.get("message_id", "") if isinstance(data, dict) else ""
        return value if isinstance(value, str) else ""
    except orjson.JSONDecodeError:
        return ""


async def run_stage(settings: Settings, stop: asyncio.Event, on_ready: Callable[[], None] | None = None,
                    instance: str = "0", *, stage: str) -> StageRunner:
    """Run the registered stage named `stage` until `stop` is set (the process `poststelle run stage:NAME`)."""
    cls = get_stage(stage)
    context = StageContext(settings=settings, blobs=FileBlobStore(settings.home / "blobs"))
    runner = StageRunner(settings, cls(settings.stage_settings(stage), context), instance=instance)
    await runner.run(stop, on_ready)
    return runner
