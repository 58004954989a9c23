"""A batch's records handled concurrently, committed in order (pipeline/hop.py `_process_batch`)."""
from __future__ import annotations

import asyncio

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from pipeline.config import load_settings
from pipeline.hop import CARRY_SECONDS, Hold, Output, TransactionalHop
from pipeline.producers import TransactionalProducer
from schemas.events import MessageOutcome, decode_event
from tests.pipeline.test_producers import KAFKA, Factory

TP0, TP1 = TopicPartition("in", 0), TopicPartition("in", 1)


def _record(tp: TopicPartition, offset: int, value: bytes) -> ConsumerRecord:
    return ConsumerRecord(tp.topic, tp.partition, offset, 0, 0, b"k", value, None, 1, 1, [])


class _Consumer:
    def __init__(self) -> None:
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.paused: list[TopicPartition] = []

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))

    def pause(self, tp: TopicPartition) -> None:
        self.paused.append(tp)

    def assignment(self) -> set[TopicPartition]:
        return {TP0, TP1}

    def resume(self, tp: TopicPartition) -> None:
        pass


class SleepingHop(TransactionalHop):
    """Each record's value says how long it takes ("sleep:0.2"), or that it must wait ("hold")."""

    def __init__(self, tmp_path, concurrency: int) -> None:
        settings = load_settings(None, environ={"POSTSTELLE_HOME": str(tmp_path)})
        super().__init__(settings, "sleepy", ["in"])
        self.max_concurrency = concurrency
        self.running = self.most_running = 0
        self.finished: list[bytes] = []

    async def handle(self, record: ConsumerRecord) -> list[Output]:
        kind, _, arg = record.value.decode().partition(":")
        if kind == "hold":
            raise Hold(30)
        if kind == "skip":  # no outputs (a chain's own record read back)
            return []
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(float(arg))
        finally:
            self.running -= 1
        self.finished.append(record.value)
        event = MessageOutcome(message_id="m", stage="sleepy", disposition="rejected", recipients=["a@b.test"],
                               reason=record.value.decode())
        return [Output("out", b"k", event)]


async def _run(hop: SleepingHop, batch, factory: Factory | None = None) -> tuple[Factory, _Consumer, float]:
    factory = factory or Factory()
    producer = TransactionalProducer(KAFKA, "g.0", make=factory)
    consumer = _Consumer()
    started = asyncio.get_running_loop().time()
    await hop._process_batch(consumer, producer, batch)
    return factory, consumer, asyncio.get_running_loop().time() - started


def _sent(factory: Factory) -> list[str]:
    return [decode_event(v).reason for v in factory.made[0].sent]


async def test_records_waiting_on_io_are_handled_at_once_and_committed_in_order(tmp_path):
    hop = SleepingHop(tmp_path, concurrency=8)
    batch = {TP0: [_record(TP0, 0, b"sleep:0.3"), _record(TP0, 1, b"sleep:0.05")],
             TP1: [_record(TP1, 7, b"sleep:0.2"), _record(TP1, 8, b"sleep:0.1")]}
    factory, _, took = await _run(hop, batch)
    assert hop.most_running == 4 and took < 0.6  # one after another: 0.65 s
    assert hop.finished[0] == b"sleep:0.05"  # the short one finished first ...
    assert _sent(factory) == ["sleep:0.3", "sleep:0.05", "sleep:0.2", "sleep:0.1"]  # ... and is sent in order
    assert factory.made[0].offsets == [{TP0: 2, TP1: 9}] and factory.made[0].committed


async def test_the_concurrency_is_bounded(tmp_path):
    hop = SleepingHop(tmp_path, concurrency=2)
    batch = {TP0: [_record(TP0, i, b"sleep:0.02") for i in range(6)]}
    factory, _, _ = await _run(hop, batch)
    assert hop.most_running == 2 and len(_sent(factory)) == 6


async def test_a_record_that_must_wait_stops_its_partition_there_and_the_rest_goes_on(tmp_path):
    hop = SleepingHop(tmp_path, concurrency=8)
    batch = {TP0: [_record(TP0, 0, b"sleep:0"), _record(TP0, 1, b"hold"), _record(TP0, 2, b"sleep:0.2")],
             TP1: [_record(TP1, 4, b"sleep:0.01")]}
    factory, consumer, _ = await _run(hop, batch)
    assert _sent(factory) == ["sleep:0", "sleep:0.01"]  # offset 2 is handled again after the wait
    assert factory.made[0].offsets == [{TP0: 1, TP1: 5}]
    assert consumer.seeks == [(TP0, 1)] and consumer.paused == [TP0]
    assert hop.running == 0  # the work after the wait was cancelled, not left running


async def test_the_services_take_one_record_after_another(tmp_path):
    hop = SleepingHop(tmp_path, concurrency=8)
    del hop.max_concurrency  # the class default of a hop
    batch = {TP0: [_record(TP0, i, b"sleep:0.01") for i in range(3)]}
    await _run(hop, batch)
    assert hop.most_running == 1


# ---- batches without outputs: their offsets ride with the next transaction ---------------------

def _transactions(factory: Factory) -> list[dict]:
    """The offsets each committed transaction carried."""
    return [offsets for made in factory.made if made.committed for offsets in made.offsets]


async def test_a_batch_without_outputs_opens_no_transaction_and_its_offsets_go_with_the_next(tmp_path):
    hop = SleepingHop(tmp_path, concurrency=8)
    factory = Factory()
    await _run(hop, {TP0: [_record(TP0, 0, b"skip"), _record(TP0, 1, b"skip")]}, factory)
    assert factory.made == [] or _transactions(factory) == []  # nothing sent, no transaction
    await _run(hop, {TP1: [_record(TP1, 4, b"sleep:0")]}, factory)
    assert _transactions(factory) == [{TP0: 2, TP1: 5}]
    assert hop._carried == {}


async def test_carried_offsets_are_committed_when_the_input_goes_quiet(tmp_path):
    hop = SleepingHop(tmp_path, concurrency=8)
    factory = Factory()
    await _run(hop, {TP0: [_record(TP0, 0, b"skip")]}, factory)
    producer = TransactionalProducer(KAFKA, "g.0", make=factory)
    await hop._commit_quiet(producer)
    assert _transactions(factory) == [{TP0: 1}] and factory.made[-1].sent == []
    await hop._commit_quiet(producer)  # nothing carried: no transaction
    assert _transactions(factory) == [{TP0: 1}]


async def test_carried_offsets_wait_no_longer_than_carry_seconds(tmp_path):
    hop = SleepingHop(tmp_path, concurrency=8)
    factory = Factory()
    await _run(hop, {TP0: [_record(TP0, 0, b"skip")]}, factory)
    hop._carried_since -= CARRY_SECONDS  # as if the first one had waited that long
    await _run(hop, {TP0: [_record(TP0, 1, b"skip")]}, factory)
    assert _transactions(factory) == [{TP0: 2}]


async def test_carried_offsets_are_forgotten_on_a_rebalance_or_a_failed_batch(tmp_path):
    hop = SleepingHop(tmp_path, concurrency=8)
    factory = Factory()
    await _run(hop, {TP0: [_record(TP0, 0, b"skip")]}, factory)
    await hop._forget_carried()  # their records are read again, and have no outputs
    await _run(hop, {TP1: [_record(TP1, 4, b"sleep:0")]}, factory)
    assert _transactions(factory) == [{TP1: 5}]
