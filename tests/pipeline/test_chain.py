"""The chain runner's record → outputs logic, without Kafka, and the `[topology] chains` setting.

Like the stage runner's tests (tests/pipeline/test_runner.py): `ChainRunner.__init__` creates no
clients, so `outputs_of()` can be fed `ConsumerRecord`s directly. Three scripted stages and the real
route stage make the chain.
"""
from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import ClassVar

import orjson
import pytest
from aiokafka.structs import ConsumerRecord

from pipeline.blobstore import FileBlobStore
from pipeline.chain import ChainRunner
from pipeline.cli.components import component, components
from pipeline.config import load_settings
from pipeline.hop import Output
from pipeline.mail.reader import message_reader
from pipeline.registry import get_stage, register
from pipeline.runner import CHAINED_HEADER, StageRunner
from pipeline.settings import ConfigError, Settings
from pipeline.stage import Outcome, StageContext, TemporaryFailure, Work
from schemas.events import (
    Deadlettered,
    MessageOutcome,
    Rejected,
    Result,
    Routed,
    StageResult,
    Verdict,
    encode_event,
)
from tests.pipeline.test_runner import _received, _record

Script = Callable[[Work], Awaitable[Outcome]]


async def _passes(work: Work) -> Outcome:
    return Outcome(verdict=Verdict.PASS)


@dataclass(frozen=True, slots=True)
class _NoSettings:
    pass


class _Scripted:
    """A stage that records what it saw and runs its class's `script` (a pass by default)."""

    description = "Test double: runs a per-test script"
    Settings = _NoSettings
    name: ClassVar[str]

    def __init__(self, settings: _NoSettings, context: StageContext) -> None:
        self.context = context
        self.script: Script = _passes
        self.seen: list[Work] = []
        self.started = self.closed = False

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.closed = True

    async def process(self, work: Work) -> Outcome:
        self.seen.append(work)
        return await self.script(work)


@register
class ChainA(_Scripted):
    name = "test_chain_a"


@register
class ChainB(_Scripted):
    name = "test_chain_b"


@register
class ChainC(_Scripted):
    name = "test_chain_c"


A, B, C = ChainA.name, ChainB.name, ChainC.name
STAGES = f"{A},{B},{C},route"


def _settings(chains: str = f'[["{A}", "{B}", "{C}", "route"]]', **env: str) -> Settings:
    return load_settings(None, environ={"POSTSTELLE_TOPOLOGY__STAGES": STAGES,
                                        "POSTSTELLE_TOPOLOGY__CHAINS": chains, **env})


def _chain(tmp_path, settings: Settings | None = None, **scripts: Script) -> ChainRunner:
    settings = settings or _settings()
    context = StageContext(settings=settings, blobs=FileBlobStore(tmp_path))
    stages = [get_stage(n)(settings.stage_settings(n), context) for n in settings.topology.chains[0]]
    for stage in stages:
        if stage.name in scripts:
            stage.script = scripts[stage.name]  # type: ignore[attr-defined]
    return ChainRunner(settings, stages)


def _stage(chain: ChainRunner, name: str) -> _Scripted:
    return next(s for s in chain.stages if s.name == name)  # type: ignore[return-value]


def _of(outputs: list[Output], kind: type) -> list:
    return [o.event for o in outputs if isinstance(o.event, kind)]


def _as_record(out: Output, offset: int = 3) -> ConsumerRecord:
    """What the chain reads back from a topic it wrote to."""
    value = encode_event(out.event)
    return ConsumerRecord(topic=out.topic, partition=0, offset=offset, timestamp=1_700_000_000_000,
                          timestamp_type=0, key=out.key, value=value, checksum=None,
                          serialized_key_size=len(out.key), serialized_value_size=len(value),
                          headers=list(out.headers))


# ---- the chain's topics and group ------------------------------------------------------------

def test_the_chain_reads_the_first_input_and_the_checked_topics_inside_it(tmp_path):
    chain = _chain(tmp_path)
    assert chain.group_id == f"poststelle.chain.{A}-route"
    assert chain.input_topics == ["poststelle.received", f"poststelle.checked.{A}", f"poststelle.checked.{B}",
                                  f"poststelle.checked.{C}"]
    assert chain.timeout == 4 * 60.0 + 1.0  # a backstop past the stages' own timeouts


# ---- every stage's outcome, as if it ran alone -----------------------------------------------

async def test_each_stage_writes_its_own_result_to_its_checked_topic(tmp_path):
    async def scored(work: Work) -> Outcome:
        return Outcome(verdict=Verdict.PASS, score=2.5, details={"seen": len(work.history)})

    chain = _chain(tmp_path, **{B: scored})
    event = _received(["bob@school.test"])
    outputs = await chain.outputs_of(_record(encode_event(event)))
    passed = {o.topic: o for o in outputs if isinstance(o.event, StageResult)}
    assert list(passed) == [f"poststelle.checked.{s}" for s in (A, B, C, "route")]
    b = passed[f"poststelle.checked.{B}"].event
    assert (b.result.stage, b.result.score, b.result.details) == (B, 2.5, {"seen": 1})
    assert b.result.duration_ms >= 0
    # marked for the chain that reads them back, naming the next stage; the last one is not read back
    assert [dict(o.headers).get(CHAINED_HEADER) for o in passed.values()] == [B.encode(), C.encode(), b"route",
                                                                            None]
    # no stage reads a marked record, so it carries no history; the last one has it all, for the next stage
    assert [len(o.event.history) for o in passed.values()] == [0, 0, 0, 3]
    assert [r.stage for r in passed["poststelle.checked.route"].event.history] == [A, B, C]
    # each stage still sees every earlier result, in memory, as it would from the record alone
    assert [r.stage for r in _stage(chain, C).seen[0].history] == [A, B]
    assert _stage(chain, C).seen[0].history[1] == b.result
    assert chain.processed == 1


async def test_a_recipient_rejected_by_the_first_stage_is_not_seen_by_the_second(tmp_path):
    async def reject_bob(work: Work) -> Outcome:
        return Outcome(verdict=Verdict.FAIL, rejected={"bob@school.test": "blocked for bob"})

    chain = _chain(tmp_path, **{A: reject_bob})
    event = _received(["bob@school.test", "carol@school.test"])
    outputs = await chain.outputs_of(_record(encode_event(event)))
    (rejected,) = _of(outputs, Rejected)
    assert (rejected.stage, rejected.recipients, rejected.reason) == (A, ["bob@school.test"], "blocked for bob")
    assert _stage(chain, B).seen[0].recipients == ["carol@school.test"]
    outcomes = [(o.stage, o.disposition, o.recipients) for o in _of(outputs, MessageOutcome)]
    assert outcomes == [(A, "rejected", ["bob@school.test"]), ("route", "routed", ["carol@school.test"])]


async def test_a_message_decided_for_every_recipient_stops_the_chain(tmp_path):
    async def quarantine(work: Work) -> Outcome:
        return Outcome(verdict=Verdict.FAIL, quarantine="held for a look")

    chain = _chain(tmp_path, **{B: quarantine})
    outputs = await chain.outputs_of(_record(encode_event(_received())))
    assert _stage(chain, A).seen and _stage(chain, B).seen and not _stage(chain, C).seen
    assert not _of(outputs, Routed)
    assert [o.topic for o in outputs if isinstance(o.event, StageResult)] == [f"poststelle.checked.{A}"]


async def test_the_route_stage_at_the_end_routes_what_is_left_with_the_edits_of_every_stage(tmp_path):
    async def tag(work: Work) -> Outcome:
        from schemas.events import Edit
        return Outcome(verdict=Verdict.PASS, edits=[Edit(stage=C, kind="subject_tag", value="[C]")])

    chain = _chain(tmp_path, **{C: tag})
    event = _received(["bob@school.test", "r@ext.test"])
    outputs = await chain.outputs_of(_record(encode_event(event)))
    routed = {r.destination: r for r in _of(outputs, Routed)}
    assert set(routed) == {"lmtp", "smarthost"}
    assert routed["lmtp"].recipients == ["bob@school.test"]
    assert [r.stage for r in routed["lmtp"].results] == [A, B, C, "route"]
    assert [e.value for e in routed["smarthost"].edits] == ["[C]"]


# ---- failures are the record's, whole --------------------------------------------------------

async def test_a_temporary_failure_of_the_third_stage_retries_the_record_from_the_start(tmp_path):
    failures = [TemporaryFailure("scanner down")]

    async def flaky(work: Work) -> Outcome:
        if failures:
            raise failures.pop()
        return Outcome(verdict=Verdict.PASS)

    chain = _chain(tmp_path, **{C: flaky})
    record = _record(encode_event(_received()))
    with pytest.raises(TemporaryFailure, match=f"stage {C}: scanner down"):
        await chain.outputs_of(record)  # the hop rewinds the partition: nothing of A and B is committed
    outputs = await chain.outputs_of(record)
    assert [len(_stage(chain, s).seen) for s in (A, B, C)] == [2, 2, 2]
    assert len(_of(outputs, StageResult)) == 4 and _of(outputs, Routed)
    assert (chain.processed, chain.deadlettered) == (1, 0)


async def test_a_stage_past_its_own_timeout_is_a_temporary_failure(tmp_path):
    async def hang(work: Work) -> Outcome:
        await asyncio.sleep(5)
        raise AssertionError("not reached")

    settings = _settings(POSTSTELLE_STAGES__TEST_CHAIN_B__TIMEOUT="0.2")
    chain = _chain(tmp_path, settings, **{B: hang})
    assert chain.timeouts == [60.0, 0.2, 60.0, 60.0]
    with pytest.raises(TemporaryFailure, match=f"stage {B}: no answer within 0.2s"):
        await chain.outputs_of(_record(encode_event(_received())))
    assert chain.deadlettered == 0


async def test_a_stage_exception_dead_letters_the_record_whole_naming_the_stage(tmp_path):
    async def boom(work: Work) -> Outcome:
        raise ValueError(f"cannot parse {work.message.headers.subject}")

    chain = _chain(tmp_path, **{B: boom})
    event = _received(subject="Kaputt")
    (out,) = await chain.outputs_of(_record(encode_event(event)))  # nothing of stage A goes out
    dead = out.event
    assert isinstance(dead, Deadlettered) and out.topic == "poststelle.deadletter"
    assert (dead.reason, dead.error) == ("exception", f"stage {B}: ValueError: cannot parse Kaputt")
    assert dead.consumer == B and dead.source_topic == "poststelle.received"  # the stage, as alone
    assert orjson.loads(dead.payload)["message_id"] == event.message_id
    assert not _stage(chain, C).seen


async def test_a_bad_outcome_is_dead_lettered_with_the_stage_name(tmp_path):
    async def wrong(work: Work) -> Outcome:
        return Outcome(verdict=Verdict.FAIL, rejected={"nobody@school.test": "?"})

    (out,) = await _chain(tmp_path, **{C: wrong}).outputs_of(_record(encode_event(_received())))
    assert out.event.reason == "bad_outcome" and f"stage {C}" in out.event.error and out.event.consumer == C


async def test_an_undecodable_record_is_dead_lettered_for_the_stage_it_was_for(tmp_path):
    chain = _chain(tmp_path)
    (out,) = await chain.outputs_of(_record(b"{not json", topic=f"poststelle.checked.{A}"))
    assert (out.event.reason, out.event.consumer, out.event.source_topic) == ("undecodable", B,
                                                                               f"poststelle.checked.{A}")


# ---- the checked topics inside the chain -----------------------------------------------------

async def test_what_the_chain_wrote_it_reads_back_and_skips(tmp_path):
    chain = _chain(tmp_path)
    outputs = await chain.outputs_of(_record(encode_event(_received())))
    for out in outputs:
        if isinstance(out.event, StageResult) and out.topic in chain.entries:
            assert await chain.outputs_of(_as_record(out)) == []
    assert (chain.skipped, len(_stage(chain, B).seen)) == (3, 1)


async def test_a_released_copy_on_a_checked_topic_runs_from_the_next_stage_on(tmp_path):
    chain = _chain(tmp_path)
    event = _received(["bob@school.test"])
    released = StageResult(message_id=event.message_id, message=event, recipients=["bob@school.test"],
                           result=Result(stage=B, verdict=Verdict.PASS, details={"released": "q1"}),
                           history=[Result(stage=A, verdict=Verdict.PASS)])
    record = _record(encode_event(released), topic=f"poststelle.checked.{B}")
    outputs = await chain.outputs_of(record)
    assert not _stage(chain, A).seen and not _stage(chain, B).seen
    assert [r.stage for r in _stage(chain, C).seen[0].history] == [A, B]
    assert [r.recipients for r in _of(outputs, Routed)] == [["bob@school.test"]]


async def test_a_stage_running_alone_skips_what_a_chain_already_ran_it_on(tmp_path):
    chain = _chain(tmp_path)
    outputs = await chain.outputs_of(_record(encode_event(_received())))
    (into_c,) = [o for o in outputs if o.topic == f"poststelle.checked.{B}"]
    settings = _settings(chains="[]")
    alone = StageRunner(settings, ChainC(_NoSettings(), StageContext(settings=settings, blobs=FileBlobStore(tmp_path))))
    assert await alone.outputs_of(_as_record(into_c)) == []
    unmarked = dataclasses.replace(into_c, headers=())  # e.g. written before chaining was turned on
    assert _of(await alone.outputs_of(_as_record(unmarked)), StageResult)


async def test_the_stages_of_a_chain_read_and_parse_a_message_once(tmp_path):
    readers = []

    async def parse(work: Work) -> Outcome:  # as the real stages do: the reader of the context's blob store
        reader = message_reader(_stage(chain, A).context.blobs)
        assert b"once" in (await reader.parsed(work.message.blob)).raw
        readers.append(reader)
        return Outcome(verdict=Verdict.PASS)

    chain = _chain(tmp_path, **{A: parse, B: parse, C: parse})
    blobs = _stage(chain, A).context.blobs
    ref = blobs.put(b"From: a@ext.test\r\nSubject: once\r\n\r\nbody\r\n")
    event = dataclasses.replace(_received(["bob@school.test"]), blob=ref)
    await chain.outputs_of(_record(encode_event(event)))
    reader = message_reader(blobs)
    assert len(readers) == 3 and {id(r) for r in readers} == {id(reader)}
    assert (reader.reads, reader.parses) == (1, 1)


# ---- [topology] chains -----------------------------------------------------------------------

@pytest.mark.parametrize(("chains", "error"), [
    (f'[["{A}", "{C}"]]', "must be consecutive"),
    (f'[["{B}", "{A}"]]', "must be consecutive"),
    (f'[["{A}", "{B}"], ["{B}", "{C}"]]', f"'{B}' is already in topology.chains"),
    (f'[["{A}", "virus"]]', "'virus' is not in topology.stages"),
    (f'[["{A}"]]', "a chain needs two stages or more"),
])
def test_a_chain_must_be_consecutive_stages_each_in_one_chain(chains, error):
    with pytest.raises(ConfigError, match=error):
        _settings(chains)


def test_poststelle_up_runs_a_chain_as_one_component_and_the_other_stages_alone():
    settings = _settings(f'[["{B}", "{C}", "route"]]', POSTSTELLE_SUPERVISOR__SINKS="[]")
    assert settings.topology.runs() == [[A], [B, C, "route"]]
    names = [c.name for c in components(settings)]
    assert names[:3] == ["ingress", f"stage:{A}", f"chain:{B}-route"]
    assert component(settings, f"chain:{B}-route").options == (("chain", f"{B}-route"),)
    with pytest.raises(ConfigError, match=f"runs in chain:{B}-route"):
        component(settings, f"stage:{C}")
    unchained = [c.name for c in components(_settings("[]"))]
    assert [n for n in unchained if n.startswith(("stage:", "chain:"))] == [f"stage:{s}" for s in STAGES.split(",")]
