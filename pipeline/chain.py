"""The chain runner: consecutive stages in one process and one Kafka transaction per batch.

Chaining is a deployment choice (`[topology] chains`, `pipeline.topology_settings`), as Kafka
Streams and Flink chain operators: the chain reads the first stage's input topic and runs each of
its stages in turn on the same `Work`, decoded once; the stages share one blob store and so the
process's one message reader (`pipeline.mail.reader`), which reads and parses a message once for
all of them. Each stage's outcome is applied exactly as the stage runner applies it
(`pipeline.stage_outputs`): every stage keeps its name, settings, timeout, `Result` and events, and
its `stage_result` is still written to its `checked.<stage>` topic (analytics, `poststelle trace`
and the quarantine read them). Hops saved: one Kafka transaction per chain instead of one per stage.

**The checked topics inside the chain.** A `checked.<stage>` topic between two stages of the chain
gets records the chain did not write: a quarantined copy released there (`pipeline.state.
quarantine_actions` re-injects into the topic of the stage that held it, for the stages after it),
and records written before the chain was turned on. So the chain consumes those topics too, with
the same consumer group, and runs such a record from the stage after the topic on. What it wrote
itself it marks with the `CHAINED_HEADER` header (naming the next stage, which it already ran) and
skips when it reads it back; reading it back keeps the group's committed offsets past it. A stage
running alone skips marked records the same way, so un-chaining never runs a stage twice on a
message (docs/decisions/0005-chaining.md).

**Failures** are the record's, whole: a temporary failure or timeout of any stage retries the record
from the chain's start (the transaction covers it: nothing of the earlier stages is committed); a
stage exception or poison message dead-letters the record with the stage's name in the error and as
the dead letter's `consumer` (a record that cannot be decoded: the stage it was for), as alone.
"""
from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Callable

from aiokafka.structs import ConsumerRecord

from pipeline.blobstore import FileBlobStore
from pipeline.broker import watch
from pipeline.bus import Topics
from pipeline.exactly_once import BATCH_FAILURES
from pipeline.handover import take_over
from pipeline.hop import Output, TransactionalHop
from pipeline.metrics import HopMetrics
from pipeline.registry import get_stage
from pipeline.runner import TEMPORARY_ERRORS, decode_work, ran_already, stage_timeout
from pipeline.settings import Settings
from pipeline.stage import Outcome, PoisonMessage, Stage, StageContext, TemporaryFailure, Work
from pipeline.stage_outputs import stage_step
from pipeline.topology_settings import chain_name

__all__ = ["ChainRunner", "run_chain"]

log = logging.getLogger(__name__)


class ChainRunner(TransactionalHop):
    """Runs consecutive stages: the first one's input topic and the checked topics inside in, every
    stage's results and terminal events out. Consumer group `<prefix>.chain.<first>-<last>`."""

    temporary_errors = TEMPORARY_ERRORS

    def __init__(self, settings: Settings, stages: list[Stage], instance: str = "0") -> None:
        if len(stages) < 2:
            raise ValueError("a chain needs two stages or more")
        self.topics = Topics.from_settings(settings)
        names = [s.name for s in stages]
        # topic → the index of the stage that reads it
        self.entries = {self.topics.stage_input(names[0]): 0,
                        **{self.topics.checked(name): i + 1 for i, name in enumerate(names[:-1])}}
        self.timeouts = [stage_timeout(settings, s) for s in stages]
        # each stage has its own timeout; the hop's bound is only a backstop past their sum
        super().__init__(settings, f"chain.{chain_name(names)}", list(self.entries), instance,
                         timeout=sum(self.timeouts) + 1.0)
        self.stages = stages
        self.processed = 0  # records run through (part of) the chain
        self.skipped = 0  # records the chain wrote itself and read back
        # records handled concurrently (`runner.concurrency`), less if a stage of the chain asks for less
        self.max_concurrency = min(getattr(s, "concurrency", None) or settings.runner.concurrency for s in stages)
        self.metrics = HopMetrics(f"chain:{chain_name(names)}", self.group_id, settings.metrics.lag_interval)

    async def run(self, stop: asyncio.Event, on_ready: Callable[[], None] | None = None) -> None:
        # where the stages ran alone or in another chain before, go on where they stopped (`pipeline.handover`)
        readers = {topic: self.stages[i].name for topic, i in self.entries.items()}
        await watch().retry(self.name, lambda: take_over(self.settings, self.group_id, readers))
        await super().run(stop, on_ready)

    async def start(self) -> None:
        for stage in self.stages:
            await stage.start()

    async def close(self) -> None:
        for stage in reversed(self.stages):
            try:
                await stage.close()
            except Exception:  # one stage's trouble closing must not keep the others open
                log.exception("%s: closing stage %s failed", self.name, stage.name)

    async def handle(self, record: ConsumerRecord) -> list[Output]:
        """Outputs of every stage for one record; temporary errors propagate (the record is retried
        from the chain's start), the rest is dead-lettered by the hop."""
        first = self.entries[record.topic]
        if ran_already(record, self.stages[first].name):
            self.skipped += 1
            return []  # written by the chain, which ran it on already
        try:
            work: Work | None = decode_work(self.settings, record)
        except PoisonMessage as exc:  # named after the stage it was for, as that stage alone would
            raise PoisonMessage(exc.reason, str(exc), consumer=self.stages[first].name) from None
        outputs: list[Output] = []
        for i in range(first, len(self.stages)):
            if work is None or not work.recipients:
                break  # every recipient decided or routed: the later stages have nothing to do
            stage = self.stages[i]
            following = self.stages[i + 1].name if i + 1 < len(self.stages) else ""
            started = time.perf_counter()
            outcome = await self._process(stage, self.timeouts[i], work)
            self.metrics.verdict(stage.name, str(outcome.verdict))  # metrics
            step = stage_step(self.topics, stage.name, work, outcome, (time.perf_counter() - started) * 1000,
                              chained_to=following)
            outputs.extend(step.outputs)
            work = step.next
        self.processed += 1
        return outputs

    async def _process(self, stage: Stage, timeout: float, work: Work) -> Outcome:
        """`stage.process` within its own timeout; its failures named after it."""
        try:
            async with asyncio.timeout(timeout):
                return await stage.process(work)
        except BATCH_FAILURES:
            raise
        except TimeoutError as exc:
            raise TemporaryFailure(f"stage {stage.name}: {str(exc) or f'no answer within {timeout:g}s'}") from exc
        except TEMPORARY_ERRORS as exc:
            raise TemporaryFailure(f"stage {stage.name}: {exc}") from exc
        except PoisonMessage as exc:
            raise PoisonMessage(exc.reason, f"stage {stage.name}: {exc}", consumer=stage.name) from None
        except Exception as exc:  # a bug of the stage: the record goes to the dead letters, named after it
            log.exception("%s: stage %s failed on %s", self.name, stage.name, work.message.message_id)
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            raise PoisonMessage("exception", f"stage {stage.name}: {detail}", consumer=stage.name) from None


async def run_chain(settings: Settings, stop: asyncio.Event, on_ready: Callable[[], None] | None = None,
                    instance: str = "0", *, chain: str) -> ChainRunner:
    """Run the chain named `chain` (`chain_name`) until `stop` is set (`poststelle run chain:NAME`).

    The stages share one blob store, so one message reader: a message is read and parsed once."""
    context = StageContext(settings=settings, blobs=FileBlobStore(settings.home / "blobs"))
    stages = [get_stage(name)(settings.stage_settings(name), context) for name in settings.topology.chain(chain)]
    runner = ChainRunner(settings, stages, instance=instance)
    await runner.run(stop, on_ready)
    return runner
