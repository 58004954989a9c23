"""The ingress's event sink (ingress/server.py `KafkaEventSink`): session events best effort and batched;
`received` events in group commits that wait for the messages on their way."""
from __future__ import annotations

import asyncio
import time

from ingress.server import KafkaEventSink
from pipeline.config import load_settings
from pipeline.producers import RenewingProducer, TransactionalProducer
from schemas.events import SmtpConnect, decode_event
from tests.consumers.sinks.analytics.samples import received
from tests.pipeline.test_producers import KAFKA, Factory, StandInProducer


def _sink(tmp_path, factory: Factory) -> KafkaEventSink:
    sink = KafkaEventSink(load_settings(None, environ={"POSTSTELLE_HOME": str(tmp_path)}))
    sink._sessions = RenewingProducer(KAFKA, "ingress-sessions", make=factory)  # the broker's stand-in
    return sink


def _connect(n: int) -> SmtpConnect:
    return SmtpConnect(session_id=f"s{n}", client_ip="127.0.0.2", client_port=1000 + n, listener="mx")


async def test_session_events_queued_together_are_sent_by_one_task_in_order(tmp_path):
    factory = Factory()
    sink = _sink(tmp_path, factory)
    for n in range(5):
        sink.notify(_connect(n))
    assert len(sink._notifications) == 5  # queued, not yet sent: one task for all of them
    await sink._notifier
    assert [decode_event(v).session_id for v in factory.made[0].sent] == [f"s{n}" for n in range(5)]
    assert sink.dropped_notifications == 0 and not sink._notifications


async def test_events_the_broker_does_not_take_are_counted_not_raised(tmp_path):
    factory = Factory(["ok", "fail", "ok"])
    sink = _sink(tmp_path, factory)
    for n in range(3):
        sink.notify(_connect(n))
    await sink._notifier
    assert sink.dropped_notifications == 1
    sink.notify(_connect(9))  # the next batch goes out on a new producer
    await asyncio.wait_for(sink._notifier, 2)
    assert decode_event(factory.made[-1].sent[-1]).session_id == "s9"


# ---- the group commit of `received` events --------------------------------------------------------


class _Committing(StandInProducer):
    """The stand-in, recording how many records each committed transaction held."""

    def __init__(self) -> None:
        super().__init__([])
        self.commits: list[int] = []

    async def begin_transaction(self) -> None:
        self._begun_at = len(self.sent)

    async def commit_transaction(self) -> None:
        self.commits.append(len(self.sent) - self._begun_at)


def _committing_sink(tmp_path, wait: float) -> tuple[KafkaEventSink, list[_Committing]]:
    made: list[_Committing] = []

    def make(kafka, name):
        made.append(_Committing())
        return made[-1]

    sink = _sink(tmp_path, Factory())
    sink._tx = TransactionalProducer(KAFKA, "ingress.0", make=make, rotation=1)
    sink.gather = wait
    return sink, made


async def _on_its_way(sink: KafkaEventSink, n: int, writing: float) -> None:
    """A message whose blob takes `writing` seconds, then persisted."""
    with sink.arriving():
        await asyncio.sleep(writing)
    await sink.persist(received(n))


async def test_a_group_commit_waits_for_the_messages_on_their_way(tmp_path):
    sink, made = _committing_sink(tmp_path, wait=2.0)
    later = asyncio.create_task(_on_its_way(sink, 2, writing=0.05))
    await asyncio.sleep(0)  # its blob is being written
    await asyncio.gather(sink.persist(received(1)), later)
    assert sum((p.commits for p in made), []) == [2]  # one transaction for both


async def test_with_nothing_on_its_way_a_group_commit_does_not_wait(tmp_path):
    sink, made = _committing_sink(tmp_path, wait=2.0)
    started = time.monotonic()
    await sink.persist(received(1))
    assert time.monotonic() - started < 0.5
    assert sum((p.commits for p in made), []) == [1]


async def test_the_wait_is_bounded_by_group_commit_wait(tmp_path):
    sink, made = _committing_sink(tmp_path, wait=0.05)
    slow = asyncio.create_task(_on_its_way(sink, 2, writing=1.0))  # a blob that takes its time
    await asyncio.sleep(0)
    started = time.monotonic()
    await sink.persist(received(1))
    assert time.monotonic() - started < 0.5  # committed without the slow one, after at most the wait
    await slow
    assert sum((p.commits for p in made), []) == [1, 1]
