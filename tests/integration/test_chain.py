"""Chaining against the real broker: switched on and off, nothing runs twice and nothing is lost.

Three counting stages on a scratch topic prefix, one partition. They run alone, then as a chain,
then alone again; between the runs messages arrive, and a released copy lands on a checked topic
inside the chain. The runners hand the topics over (`pipeline.handover`) and skip what a chain
already took further (`pipeline.runner.ran_already`), so each message passes each stage once.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer

from pipeline.bus import Topics, ensure_topics, read_topic
from pipeline.chain import ChainRunner
from pipeline.config import load_settings
from pipeline.hop import TransactionalHop
from pipeline.registry import register
from pipeline.runner import CHAINED_HEADER, StageRunner
from pipeline.settings import Settings
from pipeline.stage import Outcome, StageContext, Work
from schemas.events import BlobRef, Client, Envelope, Received, Result, StageResult, Verdict, decode_event, encode_event

CALLS: Counter[tuple[str, str]] = Counter()  # (stage, message id) → times processed


@dataclass(frozen=True, slots=True)
class _NoSettings:
    pass


class _Counting:
    description = "test stage: counts what it sees"
    Settings = _NoSettings
    name: str

    def __init__(self, settings: _NoSettings, context: StageContext) -> None:
        pass

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def process(self, work: Work) -> Outcome:
        CALLS[(self.name, work.message.message_id)] += 1
        return Outcome(verdict=Verdict.PASS)


@register
class ChainX(_Counting):
    name = "itest_chain_x"


@register
class ChainY(_Counting):
    name = "itest_chain_y"


@register
class ChainZ(_Counting):
    name = "itest_chain_z"


STAGES = [ChainX, ChainY, ChainZ]
NAMES = [s.name for s in STAGES]


def _received(message_id: str) -> Received:
    return Received(message_id=message_id,
                    envelope=Envelope(mail_from="a@example.org", rcpt_to=["max.mustermann@school.test"]),
                    client=Client(ip="127.0.0.1", port=1), blob=BlobRef(sha256="0" * 64, size=1))


def _runners(settings: Settings, chained: bool) -> list[TransactionalHop]:
    context = StageContext(settings=settings, blobs=None)  # type: ignore[arg-type]
    stages = [cls(_NoSettings(), context) for cls in STAGES]
    return [ChainRunner(settings, stages)] if chained else [StageRunner(settings, s) for s in stages]


async def _run_until(settings: Settings, chained: bool, done) -> None:
    """Run the topology (chained or not) until `done()` holds, then stop it (it drains)."""
    stop = asyncio.Event()
    runners = _runners(settings, chained)
    tasks = [asyncio.create_task(r.run(stop)) for r in runners]
    deadline = time.monotonic() + 60
    try:
        while not await done() and time.monotonic() < deadline:
            await asyncio.sleep(0.3)
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def _last_stage_results(settings: Settings) -> list[tuple[str, bool]]:
    """Every stage_result on the last stage's checked topic: (message id, marked by a chain)."""
    records = await read_topic(settings.kafka, Topics.from_settings(settings).checked(NAMES[-1]), "test-chain")
    return [(decode_event(r.value).message_id, any(k == CHAINED_HEADER for k, _ in r.headers)) for r in records]


def test_chaining_switched_on_and_off_runs_every_stage_once_per_message(stack):
    prefix = f"scratch{uuid.uuid4().hex[:8]}"
    names = ",".join(NAMES)
    settings = load_settings(None, environ={
        "POSTSTELLE_KAFKA__BOOTSTRAP": stack.bootstrap,
        "POSTSTELLE_KAFKA__TOPIC_PREFIX": prefix,
        "POSTSTELLE_KAFKA__PARTITIONS": "1",
        "POSTSTELLE_TOPOLOGY__STAGES": names,
        "POSTSTELLE_TOPOLOGY__CHAINS": f"[[{', '.join(repr(n) for n in NAMES)}]]",
        "POSTSTELLE_RUNNER__POLL_TIMEOUT_MS": "200",
    }, stage_types={n: _NoSettings for n in NAMES})
    topics = Topics.from_settings(settings)
    waves = [[f"{prefix}-{wave}-{i}" for i in range(3)] for wave in range(3)]
    released = f"{prefix}-released"

    async def scenario() -> list[tuple[str, bool]]:
        await ensure_topics(settings)
        producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap)
        await producer.start()
        try:
            async def through(count: int):
                async def done() -> bool:
                    return len(await _last_stage_results(settings)) >= count
                return done

            for message_id in waves[0]:
                await producer.send_and_wait(topics.received, encode_event(_received(message_id)))
            await _run_until(settings, False, await through(3))  # alone
            for message_id in waves[1]:
                await producer.send_and_wait(topics.received, encode_event(_received(message_id)))
            copy = StageResult(message_id=released, message=_received(released),
                               recipients=["max.mustermann@school.test"],
                               result=Result(stage=NAMES[0], verdict=Verdict.PASS, details={"released": "q1"}))
            await producer.send_and_wait(topics.checked(NAMES[0]), encode_event(copy))  # as a release writes it
            await _run_until(settings, True, await through(7))  # chained: the new wave and the released copy
            for message_id in waves[2]:
                await producer.send_and_wait(topics.received, encode_event(_received(message_id)))
            await _run_until(settings, False, await through(10))  # alone again
        finally:
            await producer.stop()
        return await _last_stage_results(settings)

    out = asyncio.run(scenario())
    assert sorted(m for m, _ in out) == sorted([*waves[0], *waves[1], released, *waves[2]]), "each message once"
    assert [marked for _, marked in out] == [False] * 10, "the last stage's results are read by the next stage alone"
    for message_id in [*waves[0], *waves[1], *waves[2]]:
        assert [CALLS[(n, message_id)] for n in NAMES] == [1, 1, 1], message_id
    assert [CALLS[(n, released)] for n in NAMES] == [0, 1, 1], "a released copy goes on from the stage after its topic"
