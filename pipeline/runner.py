"""The stage runner: a stage as a transactional hop (see `pipeline.hop`).

For each record of the stage's input topic: decode it (a poison record — too large, undecodable,
nested too deep, looping — is dead-lettered with the reason), let the stage decide for the
recipients still in play, and turn its outcome into events (`pipeline.recipients` applies it):

- `outcome` `replaced` for each recipient the stage replaced by others (first, so a waiting ingress
  follows them);
- `rejected` / `quarantined` events, one per reason, for the recipients decided here, each with its
  `outcome`;
- `stage_result` to the stage's output topic with the recipients left in play (none when the stage
  decided for all of them; routed ones leave too), every edit so far and every replacement so far;
- `held` events (parts held back) to the quarantine topic and injected messages (notices) to the
  received topic;
- for a routing stage, one `routed` event per destination and set of edits (`recipients.copies`), and
  an `outcome` `routed` for them.

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
from pipeline.bus import Topics
from pipeline.hop import Output, TransactionalHop
from pipeline.recipients import Fanout, apply_outcome, copies
from pipeline.registry import get_stage
from pipeline.settings import Settings
from pipeline.stage import Outcome, PoisonMessage, Stage, StageContext, TemporaryFailure, Work
from schemas.codec import DecodeError
from schemas.events import (
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

TEMPORARY_ERRORS = (TemporaryFailure, TimeoutError, ConnectionError)


def stage_timeout(settings: Settings, stage: Stage) -> float:
    """Seconds one record may take: `[stages.<name>] timeout`, else what the stage asks for (its
    `timeout` attribute, e.g. the virus scanner's own timeouts), else `runner.handle_timeout`."""
    return settings.stage_timeout(stage.name) or getattr(stage, "timeout", None) or settings.runner.handle_timeout


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
        return Work(message=event.message, history=history, edits=list(event.edits),
                    recipients=list(event.recipients), replacements=list(event.replacements))

    def outputs_for(self, work: Work, outcome: Outcome, duration_ms: float) -> list[Output]:
        try:
            fan = apply_outcome(work, outcome, self.stage.name)
        except ValueError as exc:
            raise PoisonMessage("bad_outcome", f"stage {self.stage.name}: {exc}") from None
        result = Result(stage=self.stage.name, verdict=outcome.verdict, score=outcome.score,
                        details=outcome.details, duration_ms=round(duration_ms, 3))
        goes_on = bool(fan.remaining or fan.routed)  # held parts and notices only for a message that goes on
        return [*self._replaced(work, fan), *self._decided(work, fan, result), *self._passed(work, fan, result),
                *(Output(self.topics.quarantine, self._key(work), held) for held in outcome.held if goes_on),
                *(Output(self.topics.received, new.message_id.encode(), new) for new in outcome.inject if goes_on),
                *self._routed(work, fan, result)]

    @staticmethod
    def _key(work: Work) -> bytes:
        return work.message.message_id.encode()

    def _outcome(self, work: Work, disposition: str, recipients: list[str], reason: str = "",
                 into: list[str] | None = None) -> Output:
        """The small outcome event a waiting ingress reads (see `ingress.verdicts`)."""
        event = MessageOutcome(message_id=work.message.message_id, stage=self.stage.name,
                               disposition=disposition, recipients=recipients, reason=reason,  # type: ignore[arg-type]
                               into=into or [])
        return Output(self.topics.outcomes, self._key(work), event)

    def _replaced(self, work: Work, fan: Fanout) -> list[Output]:
        return [self._outcome(work, "replaced", [r.recipient], r.reason, r.into) for r in fan.replacements]

    def _decided(self, work: Work, fan: Fanout, result: Result) -> list[Output]:
        outputs: list[Output] = []
        message, name = work.message, self.stage.name
        results = [*work.history, result]
        replacements = [*work.replacements, *fan.replacements]
        for reason, recipients in fan.rejected.items():
            outputs.append(Output(self.topics.rejected, self._key(work), Rejected(
                message_id=message.message_id, stage=name, reason=reason, recipients=recipients, message=message,
                results=results, replacements=replacements)))
            outputs.append(self._outcome(work, "rejected", recipients, reason))
        for reason, recipients in fan.quarantined.items():
            outputs.append(Output(self.topics.quarantine, self._key(work), Quarantined(
                message_id=message.message_id, stage=name, reason=reason, recipients=recipients, message=message,
                results=results, replacements=replacements, edits=fan.edits)))
            outputs.append(self._outcome(work, "quarantined", recipients, reason))
        return outputs

    def _passed(self, work: Work, fan: Fanout, result: Result) -> list[Output]:
        """The stage_result, unless every recipient's way ended here by a rejection or quarantine."""
        if not (fan.remaining or fan.routed):
            return []
        passed = StageResult(message_id=work.message.message_id, result=result, message=work.message,
                             recipients=fan.remaining, history=list(work.history), edits=fan.edits,
                             replacements=[*work.replacements, *fan.replacements])
        return [Output(self.topics.checked(self.stage.name), self._key(work), passed)]

    def _routed(self, work: Work, fan: Fanout, result: Result) -> list[Output]:
        outputs: list[Output] = []
        results = [*work.history, result]
        replacements = [*work.replacements, *fan.replacements]
        for destination, recipients in fan.routed.items():
            for members, edits in copies(recipients, fan.edits):
                routed = Routed(message_id=work.message.message_id, destination=destination, recipients=members,
                                message=work.message, results=results, edits=edits, replacements=replacements)
                outputs.append(Output(self.topics.routed(destination), self._key(work), routed))
        routed_recipients = [r for recipients in fan.routed.values() for r in recipients]
        if routed_recipients:
            outputs.append(self._outcome(work, "routed", routed_recipients))
        return outputs

    async def handle(self, record: ConsumerRecord) -> list[Output]:
        """Outputs for one record; temporary errors propagate (retried), the rest is dead-lettered by the hop."""
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
