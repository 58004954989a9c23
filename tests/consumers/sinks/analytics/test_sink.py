"""The sink's batching on the real store (chDB), with the Kafka consumer swapped for a scripted one:
offsets are committed only after the insert, only for partitions still assigned, and an undecodable
record only advances its offset. (Against the real broker: tests/integration/test_analytics.py.)"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from aiokafka import TopicPartition

from consumers.sinks.analytics.rows import Origin
from consumers.sinks.analytics.sink import SinkStats, _Sink
from consumers.sinks.analytics.store import AsyncAnalyticsStore
from pipeline.settings import AnalyticsSinkSettings
from schemas.events import Event, MessageOutcome, decode_event, encode_event
from tests.consumers.sinks.analytics.samples import make_settings, received

TP0, TP1 = TopicPartition("poststelle.received", 0), TopicPartition("poststelle.received", 1)


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    value: bytes | None


@dataclass
class ScriptedConsumer:
    """Hands out the scripted fetches in order, then nothing; records what was committed."""

    fetches: list[dict[TopicPartition, list[Record]]]
    assigned: set[TopicPartition] = field(default_factory=lambda: {TP0, TP1})
    commits: list[dict[TopicPartition, int]] = field(default_factory=list)

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> dict:
        if self.fetches:
            return self.fetches.pop(0)
        await asyncio.sleep(min(timeout_ms, 50) / 1000)
        return {}


class FailingFirst:
    """The real store, whose first `failures` inserts fail as if it were down."""

    def __init__(self, store: AsyncAnalyticsStore, failures: int) -> None:
        self._store = store
        self.failures = failures

    async def insert(self, events: Sequence[Event], origins: Sequence[Origin] | None = None) -> int:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("store down")
        return await self._store.insert(events, origins)


def record(tp: TopicPartition, offset: int, event: Event | None) -> Record:
    return Record(tp.topic, tp.partition, offset, encode_event(event) if event else b"\x00 not an event")


@pytest.fixture
async def astore(home: Path) -> AsyncIterator[AsyncAnalyticsStore]:
    st = await AsyncAnalyticsStore.open(make_settings(home))
    yield st
    await st.close()


async def count(store: AsyncAnalyticsStore) -> int:
    return (await store.query("SELECT count() FROM events"))[1][0][0]


async def test_a_full_batch_is_inserted_then_committed_and_the_rest_at_stop(astore: AsyncAnalyticsStore) -> None:
    events = [received(i) for i in range(5)]
    consumer = ScriptedConsumer([
        {TP0: [record(TP0, 10, events[0]), record(TP0, 11, None)], TP1: [record(TP1, 3, events[1])]},
        {TP0: [record(TP0, 12, events[2])], TP1: [record(TP1, 4, events[3]), record(TP1, 5, events[0])]},
        {TP0: [record(TP0, 13, events[4])]},
    ])
    stop = asyncio.Event()
    cfg = AnalyticsSinkSettings(batch_rows=3, batch_seconds=600)
    sink = _Sink(consumer, astore, cfg, SinkStats(), stop)  # type: ignore[arg-type]

    task = asyncio.create_task(sink.run())
    async with asyncio.timeout(10):
        while consumer.fetches or not consumer.commits:
            await asyncio.sleep(0.02)
    # 2 events and garbage (not yet full), then 3 more: one batch of 5, one of them a repeat
    assert consumer.commits == [{TP0: 13, TP1: 6}]
    stop.set()  # the last event is still batching (600 s window): stopping writes it
    await asyncio.wait_for(task, 10)

    assert consumer.commits == [{TP0: 13, TP1: 6}, {TP0: 14}]
    assert sink.stats == SinkStats(records=7, undecodable=1, inserted=5, duplicates=1, batches=2)
    _, rows = await astore.query("SELECT kafka_partition, kafka_offset FROM events ORDER BY kafka_partition, "
                                 "kafka_offset")
    assert rows == [[0, 10], [0, 12], [0, 13], [1, 3], [1, 4]]


async def test_offsets_wait_for_a_store_that_is_down(astore: AsyncAnalyticsStore) -> None:
    consumer = ScriptedConsumer([])
    store = FailingFirst(astore, failures=2)
    sink = _Sink(consumer, store, AnalyticsSinkSettings(), SinkStats(), asyncio.Event())  # type: ignore[arg-type]
    sink.add(record(TP0, 7, received(1)))

    await asyncio.wait_for(sink.flush(), 10)  # retried after 0.5 s and 1 s
    assert store.failures == 0 and sink.stats.insert_failures == 2
    assert consumer.commits == [{TP0: 8}]
    assert await count(astore) == 1


async def test_stopping_while_the_store_is_down_commits_nothing(astore: AsyncAnalyticsStore) -> None:
    consumer = ScriptedConsumer([])
    stop = asyncio.Event()
    down = FailingFirst(astore, failures=100)
    sink = _Sink(consumer, down, AnalyticsSinkSettings(), SinkStats(), stop)  # type: ignore[arg-type]
    sink.add(record(TP0, 7, received(1)))
    flushing = asyncio.create_task(sink.flush())
    await asyncio.sleep(0.1)
    stop.set()
    await asyncio.wait_for(flushing, 5)
    assert consumer.commits == []  # read again by whoever gets the partition, and deduplicated
    assert await count(astore) == 0


async def test_partitions_revoked_meanwhile_are_not_committed(astore: AsyncAnalyticsStore) -> None:
    consumer = ScriptedConsumer([])
    sink = _Sink(consumer, astore, AnalyticsSinkSettings(), SinkStats(), asyncio.Event())  # type: ignore[arg-type]
    sink.add(record(TP0, 1, received(1)))
    sink.add(record(TP1, 1, received(2)))
    consumer.assigned = {TP1}
    await sink.flush()
    assert consumer.commits == [{TP1: 2}]
    assert await count(astore) == 2


async def test_a_current_event_is_stored_as_read_and_an_older_one_upgraded(astore: AsyncAnalyticsStore) -> None:
    consumer = ScriptedConsumer([])
    sink = _Sink(consumer, astore, AnalyticsSinkSettings(), SinkStats(), asyncio.Event())  # type: ignore[arg-type]
    current = orjson.loads(encode_event(received(1)))
    current["added_by_a_newer_writer"] = [1, 2]  # a reader that knows less keeps it in the payload
    older = orjson.loads(encode_event(MessageOutcome(message_id="msg-2", stage="virus", disposition="rejected",
                                                     recipients=["bob@school.test"], reason="infected")))
    older["schema_version"] = 1
    sink.add(Record(TP0.topic, TP0.partition, 1, orjson.dumps(current)))
    sink.add(Record(TP0.topic, TP0.partition, 2, orjson.dumps(older)))
    await sink.flush()
    _, rows = await astore.query("SELECT type, schema_version, payload FROM events ORDER BY kafka_offset")
    assert [row[:2] for row in rows] == [["received", 1], ["outcome", 2]]
    assert orjson.loads(rows[0][2]) == current
    assert orjson.loads(rows[1][2])["schema_version"] == 2  # upgraded, then encoded
    assert decode_event(rows[1][2]) == decode_event(orjson.dumps(older))
