"""Redoing a batch after a broker failure (pipeline/exactly_once.py), over stand-ins for aiokafka's clients."""
from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError
from aiokafka.structs import ConsumerRecord

from pipeline.broker import BrokerUnavailable
from pipeline.exactly_once import ExactlyOnceLoop
from pipeline.producers import TransactionalProducer
from pipeline.settings import KafkaSettings
from tests.pipeline.test_producers import Factory

KAFKA = KafkaSettings(request_timeout_ms=50)
TP0, TP1 = TopicPartition("in", 0), TopicPartition("in", 1)


def _record(tp: TopicPartition, offset: int) -> ConsumerRecord:
    return ConsumerRecord(tp.topic, tp.partition, offset, 0, 0, b"k", b"v", None, 1, 1, [])


class StandInConsumer:
    """A group member that was assigned TP0 and TP1; TP0 has offset 5 committed, TP1 nothing yet."""

    def __init__(self) -> None:
        self.position = {TP0: 5, TP1: 0}
        self.seeks: list[tuple[TopicPartition, int | str]] = []
        self.stopped = False

    async def start(self) -> None:
        pass

    def subscribe(self, topics, listener=None) -> None:
        pass

    def assignment(self) -> set[TopicPartition]:
        return {TP0, TP1}

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None):
        batch = {TP0: [_record(TP0, self.position[TP0]), _record(TP0, self.position[TP0] + 1)],
                 TP1: [_record(TP1, self.position[TP1])]}
        self.position = {TP0: self.position[TP0] + 2, TP1: self.position[TP1] + 1}  # read past the batch
        return batch

    async def committed(self, tp: TopicPartition) -> int | None:
        return {TP0: 5, TP1: None}[tp]

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))
        self.position[tp] = offset

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        for tp in tps:
            self.seeks.append((tp, "beginning"))
            self.position[tp] = 0

    async def stop(self) -> None:
        self.stopped = True


def _loop(consumer: StandInConsumer, factory: Factory) -> ExactlyOnceLoop:
    return ExactlyOnceLoop(KAFKA, name="stage", group_id="g", transactional_id="g.0", topics=["in"], max_records=10,
                           poll_timeout_ms=10, lock=asyncio.Lock(),
                           producer=TransactionalProducer(KAFKA, "g.0", make=factory),
                           consumer_factory=lambda *args, **kwargs: consumer)


@pytest.mark.parametrize("failure", [BrokerUnavailable("no answer"), KafkaTimeoutError()])
async def test_a_failed_batch_is_redone_from_the_committed_offsets_with_a_new_producer(failure):
    consumer, factory = StandInConsumer(), Factory()
    loop = _loop(consumer, factory)
    stop = asyncio.Event()
    seen: list[dict] = []

    async def process(batch) -> None:
        seen.append({tp: [r.offset for r in records] for tp, records in batch.items()})
        if len(seen) == 1:
            raise failure
        stop.set()

    await loop.open()
    await asyncio.wait_for(loop.consume(stop, process), 5)
    await loop.close()
    assert seen[0] == seen[1] == {TP0: [5, 6], TP1: [0]}, "the same records again, none skipped"
    assert sorted(consumer.seeks, key=str) == sorted([(TP0, 5), (TP1, "beginning")], key=str)
    assert len(factory.made) == 2 and factory.made[0]._closed, "the first producer abandoned, a successor started"
    assert loop.redone == 1 and consumer.stopped


async def test_a_batch_that_fails_again_and_again_is_not_redone_in_a_hot_loop():
    consumer, factory = StandInConsumer(), Factory()
    loop = _loop(consumer, factory)
    stop = asyncio.Event()
    tries: list[float] = []

    async def process(batch) -> None:
        tries.append(asyncio.get_running_loop().time())
        if len(tries) == 4:
            stop.set()
            return
        raise BrokerUnavailable("a record the broker refuses")

    await loop.open()
    await asyncio.wait_for(loop.consume(stop, process), 10)
    pauses = [b - a for a, b in zip(tries, tries[1:])]
    assert pauses[0] < 0.4 and pauses[1] >= 0.5 and pauses[2] >= 1.0


async def test_consumer_options_reach_the_consumer_a_gathering_hop_asks_for():
    made: list[dict] = []

    def factory_of_consumers(*args, **kwargs):
        made.append(kwargs)
        return StandInConsumer()

    loop = ExactlyOnceLoop(KAFKA, name="bounce", group_id="g", transactional_id="g.0", topics=["in"], max_records=10,
                           poll_timeout_ms=10, lock=asyncio.Lock(),
                           producer=TransactionalProducer(KAFKA, "g.0", make=Factory()),
                           consumer_factory=factory_of_consumers,
                           consumer_options={"fetch_min_bytes": 65536, "fetch_max_wait_ms": 500})
    await loop.open()
    await loop.close()
    assert made == [{"max_poll_records": 10, "fetch_min_bytes": 65536, "fetch_max_wait_ms": 500}]

