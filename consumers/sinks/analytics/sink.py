"""The analytics sink: every event topic → batches → idempotent inserts → offset commits.

- **At least once into ClickHouse, counted once.** Offsets are committed only after the batch is
  inserted; the store drops ids it already has (`store.AnalyticsStore.insert`), so what is read
  again after a crash, a rebalance or a reset consumer group is not counted twice.
- **Analytics never blocks the pipeline.** It is its own consumer group (``<prefix>.analytics``);
  an undecodable record is logged, counted and skipped; a failed insert is retried with backoff
  (`INSERT_RETRY_INITIAL` doubling to `INSERT_RETRY_MAX`) and never skipped.
- **The embedded engine is this process's.** With chDB the sink also serves the query endpoint
  (`server.query_app`) for `poststelle sql`, in its own loop, for as long as it consumes.

The Kafka side is `_consume` and `_Sink`; `run_analytics_sink` only puts the store, the endpoint and
that loop together and takes them down in reverse order.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from consumers.sinks.analytics.rows import Origin
from consumers.sinks.analytics.server import query_app
from consumers.sinks.analytics.store import AsyncAnalyticsStore
from pipeline.broker import watch
from pipeline.bus import Topics, kafka_bound, make_consumer, start_or_release, stop_quietly
from pipeline.metrics import HopMetrics
from pipeline.settings import AnalyticsSinkSettings, Settings
from pipeline.web import serving
from schemas.events import DecodeError, Event, decode_event_as_read

__all__ = ["SinkStats", "run_analytics_sink"]

log = logging.getLogger(__name__)
FETCH_MIN_BYTES = 1 << 20  # the broker answers a fetch once this much is there, or after the batch time

INSERT_RETRY_INITIAL = 0.5
INSERT_RETRY_MAX = 30.0


@dataclass(slots=True)
class SinkStats:
    """What the sink did since it started (served at ``GET /stats``, logged at exit)."""

    records: int = 0
    undecodable: int = 0
    inserted: int = 0
    duplicates: int = 0
    batches: int = 0
    insert_failures: int = 0
    commit_failures: int = 0


@dataclass(slots=True)
class _Batch:
    events: list[Event] = field(default_factory=list)
    origins: list[Origin] = field(default_factory=list)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)  # next offset to read
    started: float | None = None

    def __len__(self) -> int:
        return len(self.events)


class _Sink:
    """Kafka records → batches → idempotent inserts → offset commits."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        store: AsyncAnalyticsStore,
        cfg: AnalyticsSinkSettings,
        stats: SinkStats,
        stop: asyncio.Event,
        commit_timeout: float = 20.0,
        metrics: HopMetrics | None = None,
    ) -> None:
        self._consumer = consumer
        self.metrics = metrics or HopMetrics("sink:analytics", "analytics")
        self._commit_timeout = commit_timeout
        self._store = store
        self._cfg = cfg
        self.stats = stats
        self._stop = stop
        self._batch = _Batch()
        self._lock = asyncio.Lock()

    def add(self, record: Any) -> None:
        """Take one record into the batch; an undecodable one only advances the offset."""
        tp = TopicPartition(record.topic, record.partition)
        self.stats.records += 1
        if self._batch.started is None:
            self._batch.started = time.monotonic()
        self._batch.offsets[tp] = record.offset + 1
        value = record.value if record.value is not None else b""
        try:
            event, current = decode_event_as_read(value)
        except DecodeError as exc:
            self.stats.undecodable += 1
            log.warning("skipping undecodable record %s[%d]@%d: %s", record.topic, record.partition, record.offset, exc)
            return
        self._batch.events.append(event)
        # stored as read; an older version (upgraded) is stored as the current one
        self._batch.origins.append(Origin(record.topic, record.partition, record.offset, value if current else b""))

    def due(self) -> bool:
        """Whether the batch is full or old enough to write."""
        if self._batch.started is None:
            return False
        full = len(self._batch) >= self._cfg.batch_rows
        return full or time.monotonic() - self._batch.started >= self._cfg.batch_seconds

    def wait_ms(self) -> int:
        """How long the next fetch may wait without delaying the batch."""
        if self._batch.started is None:
            return 500
        left = self._cfg.batch_seconds - (time.monotonic() - self._batch.started)
        return max(0, min(500, int(left * 1000)))

    async def flush(self) -> None:
        """Insert the batch (retrying until it succeeds or the sink stops), then commit its offsets."""
        async with self._lock:
            batch = self._batch
            if batch.started is None:
                return
            if batch.events and not await self._insert(batch):
                return  # stopping: the records are read again next time and deduplicated
            self._batch = _Batch()
            self.metrics.processed(len(batch))
            await self._commit(batch.offsets)

    async def _insert(self, batch: _Batch) -> bool:
        delay = INSERT_RETRY_INITIAL
        while True:
            try:
                written = await self._store.insert(batch.events, batch.origins)
            except Exception as exc:  # the store is down or refused: retry, never skip data
                self.stats.insert_failures += 1
                log.warning("analytics insert of %d events failed (%s); retrying in %.1fs", len(batch), exc, delay)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stop.wait()
                if self._stop.is_set():
                    return False
                delay = min(delay * 2, INSERT_RETRY_MAX)
                continue
            self.stats.batches += 1
            self.stats.inserted += written
            self.stats.duplicates += len(batch) - written
            return True

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit what is still assigned; a failure only means a deduplicated re-read later."""
        assigned = self._consumer.assignment()
        mine = {tp: offset for tp, offset in offsets.items() if tp in assigned}
        if not mine:
            return
        try:  # bounded: while the broker is away a commit waits for it, and the batch after it with it
            async with asyncio.timeout(self._commit_timeout):
                await self._consumer.commit(mine)
        except (KafkaError, TimeoutError) as exc:
            self.stats.commit_failures += 1
            log.warning("analytics offset commit failed (%s); those records will be re-read", exc)

    async def run(self) -> None:
        """Fetch, batch and flush until `stop` is set; then flush what is left."""
        while not self._stop.is_set():
            fetched = await self._consumer.getmany(
                timeout_ms=self.wait_ms(), max_records=max(1, self._cfg.batch_rows - len(self._batch))
            )
            for records in fetched.values():
                for record in records:
                    self.add(record)
            if self.due():
                await self.flush()
        await self.flush()


class _FlushOnRevoke(ConsumerRebalanceListener):
    """Write and commit the current batch before partitions move to another member."""

    def __init__(self, sink: _Sink) -> None:
        self._sink = sink

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._sink.flush()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        pass


async def _consume(settings: Settings, store: AsyncAnalyticsStore, stats: SinkStats, stop: asyncio.Event,
                   on_ready: Callable[[], None] | None) -> None:
    """The Kafka side: one consumer group over every event topic, until `stop` is set.

    A broker that is away at the start is waited for (`pipeline.broker`); later, aiokafka's consumer
    reconnects by itself and a commit that fails only means a deduplicated re-read."""
    bound = kafka_bound(settings.kafka)

    group = f"{settings.kafka.topic_prefix}.analytics"
    metrics = HopMetrics("sink:analytics", group, settings.metrics.lag_interval)

    async def started() -> tuple[AIOKafkaConsumer, _Sink]:
        # rows are written in batches anyway (batch_rows, batch_seconds): let the broker gather a
        # fetch's worth instead of answering each new record with a fetch of its own
        consumer = make_consumer(settings.kafka, group_id=group, client_id="analytics",
                                 fetch_min_bytes=FETCH_MIN_BYTES,
                                 fetch_max_wait_ms=max(1, min(500, int(settings.sinks.analytics.batch_seconds * 1000))))
        sink = _Sink(consumer, store, settings.sinks.analytics, stats, stop, commit_timeout=bound, metrics=metrics)
        await start_or_release(consumer, bound)  # then subscribe: the group is joined while polling
        consumer.subscribe(Topics.from_settings(settings).event_topics(), listener=_FlushOnRevoke(sink))
        return consumer, sink

    consumer, sink = await watch().retry("analytics", started)
    try:
        if on_ready is not None:
            on_ready()
        async with metrics.lag_of(lambda: consumer):
            await sink.run()
    finally:
        await stop_quietly(consumer, bound)


async def run_analytics_sink(
    settings: Settings, stop: asyncio.Event, on_ready: Callable[[], None] | None = None, instance: str = "0"
) -> None:
    """Consume every event topic into the analytics store until `stop` is set.

    With the embedded engine, also serves the query endpoint on ``sinks.analytics.query_host:
    query_port``. `on_ready` is called once the endpoint listens and the consumer has started.
    """
    cfg = settings.sinks.analytics
    stats = SinkStats()
    store = await AsyncAnalyticsStore.open(settings)
    try:
        async with contextlib.AsyncExitStack() as endpoint:
            if store.store.embedded:
                app = query_app(store, lambda: asdict(stats), host=cfg.query_host)
                await endpoint.enter_async_context(
                    serving(app, cfg.query_host, cfg.query_port, name="analytics query endpoint")
                )
            await _consume(settings, store, stats, stop, on_ready)
    finally:
        await store.close()
        log.info("analytics sink stopped: %s", stats)
