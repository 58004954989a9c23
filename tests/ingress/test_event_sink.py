"""The ingress's event sink (ingress/server.py `KafkaEventSink`): session events best effort and batched;
`received` events in group commits that wait for the messages on their way."""
from __future__ import annotations

import asyncio
import time

import pytest

from ingress.server import KafkaEventSink
from pipeline.config import load_settings
from pipeline.producers import RenewingProducer, TransactionalProducer
from schemas.events import SmtpConnect, decode_event
from tests.consumers.sinks.analytics.samples import received
from tests.pipeline.test_producers import KAFKA, Factory, StandInProducer


def _sink(tmp_path, factory: Factory) -> KafkaEventSink:
    sink = KafkaEventSink(load_settings(None, environ={"POSTSTELLE_HOME": str(tmp_path)}))
    sink._sessions = RenewingProducer(KAFKA, "ingress-sessions", make=factory)  # the broker's stand-in
    sink.notification_pause = 0.0
    return sink


def _connect(n: int) -> SmtpConnect:
    return SmtpConnect(session_id=f"s{n}", client_ip="127.0.0.2", client_port=1000 + n, listener="mx")


async def test_session_events_queued_together_are_sent_by_one_task_in_order(tmp_path):
    factory = Factory()
    sink = _sink(tmp_path, factory)
    events = [_connect(n % 2) for n in range(5)]  # two sessions
    for event in events:
        sink.notify(event)
    assert len(sink._notifications) == 5  # queued, not yet sent: one task for all of them
    await sink._notifier
    sent = [decode_event(v) for v in factory.made[0].sent]
    assert sorted(e.id for e in sent) == sorted(e.id for e in events)
    for session in ("s0", "s1"):  # a session's events in their order
        assert [e.id for e in sent if e.session_id == session] == [e.id for e in events if e.session_id == session]
    assert len(factory.made[0].batches) <= 2  # a batch per partition, not a request per event
    assert sink.dropped_notifications == 0 and not sink._notifications


async def test_events_that_come_while_a_batch_is_out_wait_for_the_next_one(tmp_path):
    factory = Factory()
    sink = _sink(tmp_path, factory)
    sink.notification_pause = 0.2
    sink.notify(_connect(0))
    await asyncio.sleep(0.05)  # the first batch is out; the task pauses
    for _ in range(3):
        sink.notify(_connect(0))
    await asyncio.sleep(0.05)
    assert [len(keys) for _, keys in factory.made[0].batches] == [1]  # not yet: they wait for the pause
    await asyncio.wait_for(sink._notifier, 2)
    assert [len(keys) for _, keys in factory.made[0].batches] == [1, 3]


async def test_events_the_broker_does_not_take_are_counted_not_raised(tmp_path):
    factory = Factory(["fail"])
    sink = _sink(tmp_path, factory)
    sink.notify(_connect(0))
    sink.notify(_connect(0))  # same session: same batch, which fails whole
    await sink._notifier
    assert sink.dropped_notifications == 2
    sink.notify(_connect(9))  # the next batch goes out on a new producer
    await asyncio.wait_for(sink._notifier, 2)
    assert decode_event(factory.made[-1].sent[-1]).session_id == "s9" and len(factory.made) == 2


# ---- the group commit of `received` events --------------------------------------------------------


class _Committing(StandInProducer):
    """The stand-in, recording how many records each committed transaction held."""

    def __init__(self) -> None:
        super().__init__([])
        self.commits: list[int] = []
        self.open = False

    async def begin_transaction(self) -> None:
        self._begun_at = len(self.sent)
        self.open = True

    async def commit_transaction(self) -> None:
        self.commits.append(len(self.sent) - self._begun_at)
        self.open = False


def _committing_sink(tmp_path, timeout: float = 5.0) -> tuple[KafkaEventSink, list[_Committing]]:
    made: list[_Committing] = []

    def make(kafka, name):
        made.append(_Committing())
        return made[-1]

    sink = _sink(tmp_path, Factory())
    sink._tx = TransactionalProducer(KAFKA, "ingress.0", make=make, rotation=1)
    sink.timeout = timeout
    return sink, made


def _commits(made: list[_Committing]) -> list[int]:
    return sum((p.commits for p in made), [])


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_record_goes_to_the_broker_while_its_blob_is_written_and_commits_after_it(tmp_path):
    sink, made = _committing_sink(tmp_path)
    blob = asyncio.get_running_loop().create_future()
    persisting = asyncio.create_task(sink.persist(received(1), blob))
    await asyncio.sleep(0.05)
    assert [decode_event(v).message_id for v in made[0].sent] == [received(1).message_id]
    assert made[0].open and _commits(made) == [] and not persisting.done()  # not before the blob is on disk
    blob.set_result(None)
    await asyncio.wait_for(persisting, 2)
    assert _commits(made) == [1]


async def test_a_message_whose_blob_fails_fails_alone(tmp_path):
    sink, made = _committing_sink(tmp_path)
    loop = asyncio.get_running_loop()
    good, bad = loop.create_future(), loop.create_future()
    first = asyncio.create_task(sink.persist(received(1), good))
    second = asyncio.create_task(sink.persist(received(2), bad))
    await asyncio.sleep(0.05)
    bad.set_exception(OSError(28, "No space left on device"))
    good.set_result(None)
    with pytest.raises(OSError, match="No space"):
        await asyncio.wait_for(second, 2)
    await asyncio.wait_for(first, 2)
    # the transaction holding both was abandoned (its successor fences it); the good one went again alone
    assert made[0].commits == [] and _commits(made) == [1]
    assert decode_event(made[-1].sent[-1]).message_id == received(1).message_id


async def test_messages_that_arrive_during_a_commit_share_the_next_one(tmp_path):
    sink, made = _committing_sink(tmp_path)
    loop = asyncio.get_running_loop()
    slow = loop.create_future()
    first = asyncio.create_task(sink.persist(received(1), slow))
    await asyncio.sleep(0.05)
    later = [asyncio.create_task(sink.persist(received(n), _done(loop))) for n in (2, 3)]
    await _settle()
    assert not any(task.done() for task in later)
    slow.set_result(None)
    await asyncio.wait_for(asyncio.gather(first, *later), 2)
    assert _commits(made) == [1, 2]


async def test_a_blob_that_never_finishes_times_out_and_nothing_is_committed(tmp_path):
    sink, made = _committing_sink(tmp_path, timeout=0.1)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await sink.persist(received(1), asyncio.get_running_loop().create_future())
    assert time.monotonic() - started < 1.0
    assert _commits(made) == []


def _done(loop: asyncio.AbstractEventLoop) -> asyncio.Future:
    future = loop.create_future()
    future.set_result(None)
    return future
