"""The stage runner's record → outputs logic, without Kafka.

`StageRunner.__init__` creates no clients, so `handle()` can be fed `ConsumerRecord`s directly; the
real route stage does the routing, a scripted test stage plays the failures.
"""
from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson
import pytest
from aiokafka.structs import ConsumerRecord

from pipeline.blobstore import FileBlobStore
from pipeline.cli.components import load_config
from pipeline.config import load_settings
from pipeline.deadletter import original_value
from pipeline.registry import get_stage, register
from pipeline.runner import Output, StageRunner
from pipeline.settings import ConfigError, Settings
from pipeline.stage import Outcome, PoisonMessage, StageContext, TemporaryFailure, Work
from schemas.codec import MAX_DEPTH
from schemas.events import (
    BlobRef,
    Client,
    Deadlettered,
    Edit,
    Envelope,
    HeaderSummary,
    Held,
    MessageOutcome,
    Quarantined,
    Received,
    Rejected,
    Replacement,
    Result,
    Routed,
    StageResult,
    Verdict,
    decode_event,
    encode_event,
)
from schemas.ids import new_id

SCRIPTED = "test_runner_scripted"


@dataclass(frozen=True, slots=True)
class ScriptedSettings:
    pass


@register
class ScriptedStage:
    """A stage whose `process` runs whatever the test put into `script`."""

    name = SCRIPTED
    description = "Test double: runs a per-test script"
    Settings = ScriptedSettings

    def __init__(self, settings: ScriptedSettings, context: StageContext) -> None:
        self.script: Callable[[Work], Awaitable[Outcome]] | None = None
        self.seen: list[Work] = []

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def process(self, work: Work) -> Outcome:
        self.seen.append(work)
        assert self.script is not None
        return await self.script(work)


def _settings(**env: str) -> Settings:
    return load_settings(None, environ={"POSTSTELLE_TOPOLOGY__STAGES": f"{SCRIPTED},route", **env})


def _runner(name: str, tmp_path, settings: Settings | None = None) -> StageRunner:
    settings = settings or _settings()
    cls = get_stage(name)
    stage = cls(settings.stage_settings(name), StageContext(settings=settings, blobs=FileBlobStore(tmp_path)))
    return StageRunner(settings, stage)


def _record(value: bytes | None, *, topic: str = "poststelle.received", partition: int = 1, offset: int = 7,
            key: bytes | None = b"key") -> ConsumerRecord:
    return ConsumerRecord(topic=topic, partition=partition, offset=offset, timestamp=1_700_000_000_000,
                          timestamp_type=0, key=key, value=value, checksum=None,
                          serialized_key_size=len(key or b""), serialized_value_size=len(value or b""),
                          headers=[])


def _received(rcpt: list[str] | None = None, subject: str = "Hallo") -> Received:
    return Received(
        message_id=new_id(),
        envelope=Envelope(mail_from="alice@ext.test",
                          rcpt_to=rcpt if rcpt is not None else ["bob@school.test", "r@ext.test",
                                                                 "carol@School.Test"]),
        client=Client(ip="192.0.2.7", port=40000, helo="mail.ext.test"),
        blob=BlobRef(sha256="cd" * 32, size=321),
        headers=HeaderSummary(subject=subject),
    )


def _only_deadletter(outputs: list[Output]) -> Deadlettered:
    assert len(outputs) == 1, outputs
    (out,) = outputs
    assert out.topic == "poststelle.deadletter"
    assert isinstance(out.event, Deadlettered)
    return out.event


# ---- the route stage through the runner ------------------------------------------------------


def test_runner_builds_no_clients_and_names_its_topics(tmp_path):
    runner = _runner("route", tmp_path)
    assert runner.input_topic == "poststelle.checked." + SCRIPTED  # route follows the scripted stage
    assert runner.group_id == "poststelle.route"
    assert runner.transactional_id == "poststelle.route.0"
    default = _runner("route", tmp_path, load_settings(None, environ={}))
    assert default.input_topic == "poststelle.received"


async def test_received_event_is_routed_by_destination(tmp_path):
    runner = _runner("route", tmp_path, load_settings(None, environ={}))
    event = _received()
    outputs = await runner.outputs_of(_record(encode_event(event)))

    assert [o.topic for o in outputs] == [
        "poststelle.checked.route", "poststelle.routed.lmtp", "poststelle.routed.smarthost", "poststelle.outcomes"]
    assert all(o.key == event.message_id.encode() for o in outputs)
    outcome = outputs[3].event  # what a waiting ingress reads: every recipient routed
    assert isinstance(outcome, MessageOutcome) and outcome.disposition == "routed"
    assert sorted(outcome.recipients) == sorted(event.envelope.rcpt_to) and outcome.stage == "route"

    passed = outputs[0].event
    assert isinstance(passed, StageResult)
    assert passed.message == event and passed.message_id == event.message_id
    assert passed.history == []
    assert passed.result.stage == "route" and passed.result.verdict is Verdict.PASS
    assert passed.result.details["routes"] == {"lmtp": ["bob@school.test", "carol@School.Test"],
                                               "smarthost": ["r@ext.test"]}
    assert passed.result.duration_ms >= 0

    local, remote = outputs[1].event, outputs[2].event
    assert isinstance(local, Routed) and isinstance(remote, Routed)
    assert (local.destination, local.recipients) == ("lmtp", ["bob@school.test", "carol@School.Test"])
    assert (remote.destination, remote.recipients) == ("smarthost", ["r@ext.test"])
    assert local.results == [passed.result] and local.message == event and local.attempt == 0
    # everything produced is a valid event
    for out in outputs:
        assert decode_event(encode_event(out.event)) == out.event
    assert (runner.processed, runner.deadlettered) == (1, 0)


async def test_only_local_recipients_give_one_routed_event(tmp_path):
    runner = _runner("route", tmp_path, load_settings(None, environ={}))
    outputs = await runner.outputs_of(_record(encode_event(_received(rcpt=["a@school.test", "b@school.test"]))))
    assert [o.topic for o in outputs] == ["poststelle.checked.route", "poststelle.routed.lmtp", "poststelle.outcomes"]
    assert outputs[1].event.recipients == ["a@school.test", "b@school.test"]


async def test_stage_result_input_carries_history_and_edits(tmp_path):
    runner = _runner("route", tmp_path)
    message = _received(rcpt=["r@ext.test"])
    earlier = Result(stage=SCRIPTED, verdict=Verdict.FAIL, score=6.0, details={"rules": ["X"]})
    older = Result(stage="blocklist", verdict=Verdict.SKIP)
    edit = Edit(stage=SCRIPTED, kind="subject_tag", value="[SPAM]")
    event = StageResult(message_id=message.message_id, result=earlier, message=message, recipients=["r@ext.test"],
                        history=[older], edits=[edit])
    outputs = await runner.outputs_of(_record(encode_event(event), topic=runner.input_topic))
    passed, routed = outputs[0].event, outputs[1].event
    assert isinstance(passed, StageResult) and isinstance(routed, Routed)
    assert passed.history == [older, earlier]
    assert passed.edits == [edit]
    assert [r.stage for r in routed.results] == ["blocklist", SCRIPTED, "route"]
    assert routed.edits == [edit] and routed.destination == "smarthost"


# ---- poison records ---------------------------------------------------------------------------


@pytest.mark.parametrize("garbage", [b"\x00\xff\xfe not json", b"[1, 2, 3]", b'{"type": "nope"}', b""])
async def test_garbage_is_deadlettered_as_undecodable(tmp_path, garbage):
    runner = _runner("route", tmp_path)
    dead = _only_deadletter(await runner.outputs_of(_record(garbage, partition=3, offset=42)))
    assert dead.reason == "undecodable"
    assert dead.consumer == "route"
    assert (dead.source_topic, dead.partition, dead.offset) == ("poststelle.received", 3, 42)
    assert original_value(dead, runner.blobs) == garbage  # the whole record, byte for byte
    assert dead.key == "key" and dead.error
    assert (runner.processed, runner.deadlettered) == (0, 1)


async def test_an_event_of_the_wrong_type_is_undecodable(tmp_path):
    runner = _runner("route", tmp_path)
    message = _received()
    routed = Routed(message_id=message.message_id, destination="lmtp", recipients=["b@school.test"],
                    message=message)
    dead = _only_deadletter(await runner.outputs_of(_record(encode_event(routed))))
    assert dead.reason == "undecodable"
    assert "unexpected event type" in dead.error
    assert dead.message_id == message.message_id  # read from the payload for the person inspecting it


async def test_record_over_the_size_limit_is_too_large(tmp_path):
    settings = _settings(POSTSTELLE_RUNNER__MAX_EVENT_BYTES="2000")
    runner = _runner("route", tmp_path, settings)
    assert runner.settings.runner.max_event_bytes == 2000
    small = encode_event(_received())
    assert len(small) < 2000
    assert (await runner.outputs_of(_record(small)))[0].topic == "poststelle.checked.route"
    big = encode_event(_received(subject="x" * 3000))
    dead = _only_deadletter(await runner.outputs_of(_record(big)))
    assert dead.reason == "too_large"
    assert str(len(big)) in dead.error
    assert original_value(dead, runner.blobs) == big  # the whole record, not an excerpt


async def test_deeply_nested_details_are_too_deep(tmp_path):
    runner = _runner("route", tmp_path)
    message = _received()
    event = StageResult(message_id=message.message_id, message=message, recipients=["r@ext.test"],
                        result=Result(stage=SCRIPTED, verdict=Verdict.PASS, details={"marker": 1}))
    deep = '{"x":' * (MAX_DEPTH + 3) + "1" + "}" * (MAX_DEPTH + 3)
    payload = encode_event(event).replace(b'"details":{"marker":1}', b'"details":{"deep":' + deep.encode() + b"}")
    assert payload != encode_event(event)
    dead = _only_deadletter(await runner.outputs_of(_record(payload, topic=runner.input_topic)))
    assert dead.reason == "too_deep"
    assert dead.message_id == message.message_id


async def test_an_event_that_passed_too_many_stages_is_looping(tmp_path):
    runner = _runner("route", tmp_path, _settings(POSTSTELLE_RUNNER__MAX_HOPS="3"))
    message = _received()
    hop = Result(stage=SCRIPTED, verdict=Verdict.PASS)
    ok = StageResult(message_id=message.message_id, message=message, result=hop, history=[hop, hop],
                     recipients=list(message.envelope.rcpt_to))
    assert (await runner.outputs_of(_record(encode_event(ok))))[0].topic == "poststelle.checked.route"
    looping = dataclasses.replace(ok, history=[hop, hop, hop])
    assert _only_deadletter(await runner.outputs_of(_record(encode_event(looping)))).reason == "looping"


# ---- what the stage raises ----------------------------------------------------------------------


def _scripted(tmp_path, script: Callable[[Work], Awaitable[Outcome]]) -> StageRunner:
    runner = _runner(SCRIPTED, tmp_path)
    runner.stage.script = script  # type: ignore[attr-defined]
    return runner


async def test_stage_raising_value_error_is_deadlettered_as_exception(tmp_path):
    async def boom(work: Work) -> Outcome:
        raise ValueError(f"cannot parse {work.message.headers.subject}")

    runner = _scripted(tmp_path, boom)
    event = _received(subject="Kaputt")
    dead = _only_deadletter(await runner.outputs_of(_record(encode_event(event), key=None)))
    assert dead.reason == "exception"
    assert dead.error == "ValueError: cannot parse Kaputt"
    assert dead.consumer == SCRIPTED
    assert dead.message_id == event.message_id
    assert orjson.loads(dead.payload)["message_id"] == event.message_id
    assert runner.deadlettered == 1 and runner.processed == 0


@pytest.mark.parametrize("error", [TemporaryFailure("clamd down"), TimeoutError(), ConnectionError("reset")])
async def test_temporary_failures_are_raised_for_a_retry(tmp_path, error):
    async def later(work: Work) -> Outcome:
        raise error

    runner = _scripted(tmp_path, later)
    with pytest.raises(type(error)):
        await runner.outputs_of(_record(encode_event(_received())))
    assert (runner.processed, runner.deadlettered) == (0, 0)


async def test_poison_message_from_the_stage_keeps_its_reason(tmp_path):
    async def poison(work: Work) -> Outcome:
        raise PoisonMessage("corrupt_mime", "boundary never closed")

    runner = _scripted(tmp_path, poison)
    dead = _only_deadletter(await runner.outputs_of(_record(encode_event(_received()))))
    assert (dead.reason, dead.error) == ("corrupt_mime", "boundary never closed")


async def test_reject_and_quarantine_outcomes(tmp_path):
    event = _received()

    async def reject(work: Work) -> Outcome:
        return Outcome(verdict=Verdict.FAIL, score=9.0, reject="sender blocked")

    async def quarantine(work: Work) -> Outcome:
        return Outcome(verdict=Verdict.FAIL, quarantine="Eicar-Test-Signature")

    out, told = await _scripted(tmp_path, reject).outputs_of(_record(encode_event(event)))
    assert out.topic == "poststelle.rejected" and isinstance(out.event, Rejected)
    assert out.event.reason == "sender blocked" and out.event.stage == SCRIPTED
    assert out.event.recipients == event.envelope.rcpt_to
    assert [r.score for r in out.event.results] == [9.0]
    assert told.topic == "poststelle.outcomes" and isinstance(told.event, MessageOutcome)
    assert (told.event.disposition, told.event.reason, told.event.recipients) == (
        "rejected", "sender blocked", event.envelope.rcpt_to)

    out, told = await _scripted(tmp_path, quarantine).outputs_of(_record(encode_event(event)))
    assert out.topic == "poststelle.quarantine" and isinstance(out.event, Quarantined)
    assert out.event.reason == "Eicar-Test-Signature" and out.event.message == event
    assert (told.event.disposition, told.event.stage) == ("quarantined", SCRIPTED)


async def test_stage_edits_are_appended_to_earlier_ones(tmp_path):
    mine = Edit(stage=SCRIPTED, kind="add_header", name="X-Checked", value="yes")

    async def tag(work: Work) -> Outcome:
        return Outcome(verdict=Verdict.PASS, edits=[mine])

    runner = _scripted(tmp_path, tag)
    (out,) = await runner.outputs_of(_record(encode_event(_received())))
    assert out.topic == f"poststelle.checked.{SCRIPTED}"
    assert out.event.edits == [mine]
    assert runner.stage.seen[0].history == []  # type: ignore[attr-defined]


async def test_held_parts_and_injected_messages_go_with_a_passing_outcome(tmp_path):
    event = _received(rcpt=["bob@school.test"])
    held = Held(message_id=event.message_id, stage=SCRIPTED, part="2", sha256="ab" * 32, filename="a.exe",
                content_type="application/octet-stream", reasons=["blocked_extension: .exe"],
                recipients=["bob@school.test"], message=event)
    notice = dataclasses.replace(_received(rcpt=["bob@school.test"]), listener="notice")

    async def hold(work: Work) -> Outcome:
        return Outcome(verdict=Verdict.FAIL, held=[held], inject=[notice])

    outputs = await _scripted(tmp_path, hold).outputs_of(_record(encode_event(event)))
    assert [o.topic for o in outputs] == [f"poststelle.checked.{SCRIPTED}", "poststelle.quarantine",
                                          "poststelle.received"]
    assert outputs[1].event == held and outputs[1].key == event.message_id.encode()
    assert outputs[2].event == notice and outputs[2].key == notice.message_id.encode()


async def test_held_parts_are_dropped_when_the_whole_message_is_quarantined(tmp_path):
    event = _received()
    held = Held(message_id=event.message_id, stage=SCRIPTED, part="1", sha256="ab" * 32, filename="a.exe",
                content_type="application/octet-stream", reasons=["x"], recipients=[], message=event)

    async def both(work: Work) -> Outcome:
        return Outcome(verdict=Verdict.FAIL, quarantine="too deep", held=[held])

    out, told = await _scripted(tmp_path, both).outputs_of(_record(encode_event(event)))
    assert isinstance(out.event, Quarantined) and isinstance(told.event, MessageOutcome)


# ---- per recipient ------------------------------------------------------------------------------


async def test_a_stage_decides_per_recipient_and_the_rest_goes_on(tmp_path):
    event = _received(rcpt=["a@school.test", "b@school.test", "c@school.test"])

    async def split(work: Work) -> Outcome:
        return Outcome(verdict=Verdict.FAIL, score=8.0, quarantined={"a@school.test": "spam 8.0"},
                       rejected={"c@school.test": "no mail for c"})

    outputs = await _scripted(tmp_path, split).outputs_of(_record(encode_event(event)))
    assert [o.topic for o in outputs] == ["poststelle.rejected", "poststelle.outcomes", "poststelle.quarantine",
                                          "poststelle.outcomes", f"poststelle.checked.{SCRIPTED}"]
    rejected, told_rejected, quarantined, told_quarantined, passed = (o.event for o in outputs)
    assert isinstance(rejected, Rejected) and rejected.recipients == ["c@school.test"]
    assert (told_rejected.disposition, told_rejected.recipients) == ("rejected", ["c@school.test"])
    assert isinstance(quarantined, Quarantined) and quarantined.recipients == ["a@school.test"]
    assert (told_quarantined.disposition, told_quarantined.recipients) == ("quarantined", ["a@school.test"])
    assert isinstance(passed, StageResult) and passed.recipients == ["b@school.test"]


async def test_a_replacement_is_told_first_and_carried_in_the_history(tmp_path):
    event = _received(rcpt=["9a@school.test"])

    async def expand(work: Work) -> Outcome:
        return Outcome(verdict=Verdict.PASS, replace=[Replacement(recipient="9a@school.test",
                                                                  into=["max@school.test", "lena@school.test"],
                                                                  reason="group 9a")])

    told, passed = (o.event for o in await _scripted(tmp_path, expand).outputs_of(_record(encode_event(event))))
    assert isinstance(told, MessageOutcome)
    assert (told.disposition, told.recipients, told.into, told.reason) == (
        "replaced", ["9a@school.test"], ["max@school.test", "lena@school.test"], "group 9a")
    assert passed.recipients == ["max@school.test", "lena@school.test"]
    assert [(r.stage, r.recipient) for r in passed.replacements] == [(SCRIPTED, "9a@school.test")]
    # the route stage after it sees the members, and every routed copy carries the history
    route = _runner("route", tmp_path)
    outputs = await route.outputs_of(_record(encode_event(passed), topic=route.input_topic))
    (routed,) = [o.event for o in outputs if isinstance(o.event, Routed)]
    assert routed.recipients == ["max@school.test", "lena@school.test"]
    assert routed.replacements == passed.replacements and routed.message.envelope.rcpt_to == ["9a@school.test"]


async def test_the_route_stage_makes_one_copy_per_set_of_edits(tmp_path):
    message = _received(rcpt=["a@school.test", "b@school.test", "c@school.test", "r@ext.test"])
    everyone = Edit(stage="auth", kind="add_header", name="Authentication-Results", value="mx; spf=pass")
    tag = Edit(stage="spam", kind="subject_tag", value="[SPAM?]", recipients=["a@school.test", "c@school.test"])
    event = StageResult(message_id=message.message_id, message=message, recipients=list(message.envelope.rcpt_to),
                        result=Result(stage=SCRIPTED, verdict=Verdict.PASS), edits=[everyone, tag])
    route = _runner("route", tmp_path)
    outputs = await route.outputs_of(_record(encode_event(event), topic=route.input_topic))
    copies = [(o.event.destination, o.event.recipients, [e.value for e in o.event.edits]) for o in outputs
              if isinstance(o.event, Routed)]
    assert copies == [("lmtp", ["a@school.test", "c@school.test"], ["mx; spf=pass", "[SPAM?]"]),
                      ("lmtp", ["b@school.test"], ["mx; spf=pass"]),
                      ("smarthost", ["r@ext.test"], ["mx; spf=pass"])]
    (told,) = [o.event for o in outputs if isinstance(o.event, MessageOutcome)]
    assert sorted(told.recipients) == sorted(message.envelope.rcpt_to)


async def test_a_version_1_stage_result_on_the_topic_replays_for_every_envelope_recipient(tmp_path):
    message = _received(rcpt=["a@school.test", "r@ext.test"])
    v1 = orjson.loads(encode_event(StageResult(message_id=message.message_id, message=message, recipients=[],
                                               result=Result(stage=SCRIPTED, verdict=Verdict.PASS))))
    v1["schema_version"] = 1
    del v1["recipients"], v1["replacements"]
    route = _runner("route", tmp_path)
    outputs = await route.outputs_of(_record(orjson.dumps(v1), topic=route.input_topic))
    assert sorted(r for o in outputs if isinstance(o.event, Routed) for r in o.event.recipients) == [
        "a@school.test", "r@ext.test"]


async def test_an_outcome_naming_a_recipient_not_in_play_is_dead_lettered(tmp_path):
    async def wrong(work: Work) -> Outcome:
        return Outcome(verdict=Verdict.FAIL, quarantined={"nobody@school.test": "spam"})

    dead = _only_deadletter(await _scripted(tmp_path, wrong).outputs_of(_record(encode_event(_received()))))
    assert dead.reason == "bad_outcome" and "nobody@school.test" in dead.error


async def test_a_stage_that_takes_longer_than_its_timeout_is_a_temporary_failure(tmp_path):
    async def hang(work: Work) -> Outcome:
        await asyncio.sleep(5)
        raise AssertionError("not reached")

    runner = _runner(SCRIPTED, tmp_path, _settings(POSTSTELLE_STAGES__TEST_RUNNER_SCRIPTED__TIMEOUT="0.2"))
    runner.stage.script = hang  # type: ignore[attr-defined]
    assert runner.timeout == 0.2
    with pytest.raises(TimeoutError):  # the hop rewinds the partition and retries with backoff
        await runner.outputs_of(_record(encode_event(_received())))
    assert runner.deadlettered == 0


def test_the_stage_timeout_comes_from_its_section_else_the_stage_else_the_runner(tmp_path):
    assert _runner("route", tmp_path).timeout == 60.0  # runner.handle_timeout
    assert _runner("route", tmp_path, _settings(POSTSTELLE_RUNNER__HANDLE_TIMEOUT="5")).timeout == 5.0
    assert _runner("route", tmp_path, _settings(POSTSTELLE_STAGES__ROUTE__TIMEOUT="2m")).timeout == 120.0
    virus = load_config(None, environ={"POSTSTELLE_TOPOLOGY__STAGES": "virus,route"})
    assert _runner("virus", tmp_path, virus).timeout == 5.0 + 120.0 + 10.0  # what a whole scan may take
    with pytest.raises(ConfigError, match="stages.route.timeout: expected a duration"):
        _settings(POSTSTELLE_STAGES__ROUTE__TIMEOUT="soon")
