"""The analytics sink against the real broker: every event topic read once, garbage counted, offsets
committed only after the rows are in chDB."""
from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from consumers.sinks.analytics import run_analytics_sink, run_sql
from pipeline.bus import Topics, ensure_topics, make_producer
from pipeline.settings import KafkaSettings, Settings
from schemas.events import Event, encode_event
from tests.consumers.sinks.analytics.samples import make_settings, received, sample_events


async def _wait_for(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


@pytest.mark.integration
async def test_sink_consumes_every_event_topic_once(stack, tmp_path: Path) -> None:
    home, BROKER = tmp_path, stack.bootstrap
    prefix = f"scratch.analytics-{uuid.uuid4().hex[:8]}"
    kafka = KafkaSettings(bootstrap=BROKER, topic_prefix=prefix, partitions=2)
    settings = make_settings(home, kafka=kafka, batch_rows=100, batch_seconds=0.2)
    cfg = settings.sinks.analytics
    topics = Topics.from_settings(settings)
    msg, stage, routed, delivered, smtp_reject = events = sample_events()
    placement = [
        (topics.received, msg),
        (topics.checked("route"), stage),
        (topics.routed("lmtp"), routed),
        (topics.delivery, delivered),
        (topics.sessions, smtp_reject),
    ]

    async def produce(items: list[tuple[str, Event]], garbage: bool) -> None:
        producer = make_producer(kafka, "analytics-test")
        await producer.start()
        try:
            for topic, event in items:
                await producer.send_and_wait(topic, encode_event(event), key=event.message_id.encode())
            if garbage:
                await producer.send_and_wait(topics.sessions, b"\x00 not an event", key=b"x")
        finally:
            await producer.stop()

    async def stats() -> dict:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{cfg.query_port}") as http:
            return (await http.get("/stats")).raise_for_status().json()

    async def count() -> int:
        return (await asyncio.to_thread(run_sql, settings, "SELECT count() FROM events"))[1][0][0]

    async def start_sink(s: Settings) -> tuple[asyncio.Event, asyncio.Task]:
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(run_analytics_sink(s, stop, ready.set))
        await asyncio.wait_for(ready.wait(), 60)
        return stop, task

    await ensure_topics(settings, timeout=30)
    try:
        await produce(placement, garbage=True)
        stop, task = await start_sink(settings)
        try:
            await _wait_for(lambda: _equals(count, len(events)), what="the first rows")
            await _wait_for(lambda: _stat_is(stats, "records", 6), what="all records read")
            assert (await stats())["undecodable"] == 1

            await produce(placement, garbage=False)  # a replay of the same events
            await _wait_for(lambda: _stat_is(stats, "duplicates", len(events)), what="the replay")
            assert await count() == len(events)
            _, by_type = await asyncio.to_thread(
                run_sql, settings, "SELECT type, count() FROM events GROUP BY type ORDER BY type"
            )
            expected = [["delivered", 1], ["received", 1], ["routed", 1], ["smtp_reject", 1], ["stage_result", 1]]
            assert by_type == expected
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)

        # a long batch window: stopping must still write the last batch and commit it
        slow = make_settings(
            home, database=cfg.database, kafka=kafka, batch_rows=1000, batch_seconds=600, query_port=cfg.query_port
        )
        late = [received(100 + i) for i in range(2)]
        await produce([(topics.received, e) for e in late], garbage=False)
        stop, task = await start_sink(slow)
        try:
            await _wait_for(lambda: _stat_is(stats, "records", 2), what="the late records")
            assert (await stats())["inserted"] == 0  # still batching
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
        assert await count() == len(events) + 2  # the sink is gone: run_sql opens the store itself

        admin = AIOKafkaAdminClient(bootstrap_servers=BROKER)
        await admin.start()
        try:
            committed = await admin.list_consumer_group_offsets(f"{prefix}.analytics")
        finally:
            await admin.close()
        assert sum(meta.offset for meta in committed.values()) == 6 + 5 + 2
    finally:
        admin = AIOKafkaAdminClient(bootstrap_servers=BROKER)
        await admin.start()
        try:
            await admin.delete_topics(topics.all_topics())
        finally:
            await admin.close()


async def _equals(fn, expected) -> bool:
    return await fn() == expected


async def _stat_is(stats, key: str, expected: int) -> bool:
    return (await stats()).get(key) == expected
