"""The stage runner: a stage as a transactional hop (see `pipeline.hop`).

For each record of the stage's input topic: decode it (a poison record — too large, undecodable,
nested too deep, looping — is dead-lettered with the reason), let the stage decide for the
recipients still in play, and turn its outcome into events (`pipeline.stage_outputs`: outcomes,
rejections, quarantine entries, the `stage_result` on `checked.<stage>`, held parts, injected
notices, routed copies).

A `stage_result` that a chain of stages wrote and already took further (`pipeline.chain`: marked by
the `CHAINED_HEADER` header naming the next stage) is skipped by that next stage: the chain ran it.

A stage exception dead-letters the record (see `pipeline.hop`), except the temporary errors, which
retry it with backoff; so does an outcome that names a recipient not in play (`bad_outcome`).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiokafka.structs import ConsumerRecord

from pipeline.blobstore import FileBlobStore
from pipeline.broker import watch
from pipeline.bus import Topics
from pipeline.handover import take_over
from pipeline.hop import Output, TransactionalHop
from pipeline.registry import get_stage
from pipeline.settings import Settings
from pipeline.stage import Outcome, PoisonMessage, Stage, StageContext, TemporaryFailure, Work
from pipeline.stage_outputs import CHAINED_HEADER, stage_step
from schemas.codec import DecodeError
from schemas.events import Received, StageResult, decode_event

__all__ = ["StageRunner", "Output", "run_stage", "decode_work", "ran_already", "stage_timeout", "CHAINED_HEADER",
           "TEMPORARY_ERRORS"]

log = logging.getLogger(__name__)

TEMPORARY_ERRORS = (TemporaryFailure, TimeoutError, ConnectionError)


def stage_timeout(settings: Settings, stage: Stage) -> float:
    """Seconds one record may take: `[stages.<name>] timeout`, else what the stage asks for (its
    `timeout` attribute, e.g. the virus scanner's own timeouts), else `runner.handle_timeout`."""
    return settings.stage_timeout(stage.name) or getattr(stage, "timeout", None) or settings.runner.handle_timeout


def decode_work(settings: Settings, record: ConsumerRecord) -> Work:
    """A stage's input from a `received` or `stage_result` record, or `PoisonMessage` when the record
    cannot be one (too large, undecodable, nested too deep, or past `runner.max_hops` stages)."""
    limits = settings.runner
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
    return Work(message=event.message, history=history, edits=list(event.edits),
                recipients=list(event.recipients), replacements=list(event.replacements))


def ran_already(record: ConsumerRecord, stage: str) -> bool:
    """Whether `record` is a `stage_result` a chain wrote after it had already run `stage` on it
    (`pipeline.chain`): the consumer that would run `stage` on it skips it."""
    return any(k == CHAINED_HEADER and v == stage.encode() for k, v in record.headers or ())


class StageRunner(TransactionalHop):
    """Runs one stage: its input topic in, its results and terminal events out."""

    temporary_errors = TEMPORARY_ERRORS
    component_prefix = "stage:"

    def __init__(self, settings: Settings, stage: Stage, instance: str = "0") -> None:
        self.topics = Topics.from_settings(settings)
        self.input_topic = self.topics.stage_input(stage.name)
        super().__init__(settings, stage.name, [self.input_topic], instance, timeout=stage_timeout(settings, stage))
        self.stage = stage
        self.processed = 0
        # stages handle records concurrently (`runner.concurrency`) unless they say otherwise
        self.max_concurrency = getattr(stage, "concurrency", None) or settings.runner.concurrency

    async def run(self, stop: asyncio.Event, on_ready: Callable[[], None] | None = None) -> None:
        # where the stage ran in a chain before, go on where the chain stopped (`pipeline.handover`)
        readers = {self.input_topic: self.stage.name}
        await watch().retry(self.name, lambda: take_over(self.settings, self.group_id, readers))
        await super().run(stop, on_ready)

    async def start(self) -> None:
        await self.stage.start()

    async def close(self) -> None:
        await self.stage.close()

    # -- record → outputs ---------------------------------------------------------------------

    def decode(self, record: ConsumerRecord) -> Work:
        """The stage's input, or `PoisonMessage` when the record cannot be one."""
        return decode_work(self.settings, record)

    def outputs_for(self, work: Work, outcome: Outcome, duration_ms: float) -> list[Output]:
        return stage_step(self.topics, self.stage.name, work, outcome, duration_ms).outputs

    async def handle(self, record: ConsumerRecord) -> list[Output]:
        """Outputs for one record; temporary errors propagate (retried), the rest is dead-lettered by the hop."""
        if ran_already(record, self.stage.name):
            return []  # a chain wrote it and ran this stage on it already (after an un-chaining)
        work = self.decode(record)
        if not work.recipients:
            return []  # every recipient was routed by an earlier stage: nothing left to decide
        started = time.perf_counter()
        outcome = await self.stage.process(work)
        self.metrics.verdict(self.stage.name, str(outcome.verdict))  # metrics
        outputs = self.outputs_for(work, outcome, (time.perf_counter() - started) * 1000)
        self.processed += 1
        return outputs


async def run_stage(settings: Settings, stop: asyncio.Event, on_ready: Callable[[], None] | None = None,
                    instance: str = "0", *, stage: str) -> StageRunner:
    """Run the registered stage named `stage` until `stop` is set (the process `poststelle run stage:NAME`)."""
    cls = get_stage(stage)
    context = StageContext(settings=settings, blobs=FileBlobStore(settings.home / "blobs"))
    runner = StageRunner(settings, cls(settings.stage_settings(stage), context), instance=instance)
    await runner.run(stop, on_ready)
    return runner
