"""A transactional hop: consume → handle → produce, one Kafka transaction per batch.

The stage runner, the retry service and the bounce service are hops: each says what one input
record turns into (`handle`), and this class does the Kafka work the same way for all of them.
For a batch, the outputs of every record and the consumer offsets past them are committed in one
transaction (`send_offsets_to_transaction`), so a hop is exactly-once: after a crash the open
transaction is aborted (the restarted process fences it with the same transactional id) and the
batch is processed again from the last committed offset.

- A record that cannot be handled yet — `Hold` (not due), a temporary error of the hop, or a
  `handle` that takes longer than `timeout` seconds — is not skipped: its partition is rewound to
  it and paused (for the hold's delay, or a growing backoff); records before it in the batch are
  committed, the other partitions go on.
- A record that can never be handled — `PoisonMessage` (undecodable, ...) or any other exception
  of `handle` — is dead-lettered whole with the reason (`pipeline.deadletter`), in the same
  transaction, and the hop goes on with the next record: never a crash loop.
- A batch without outputs (a chain reading back what it wrote, `pipeline.chain`) opens no
  transaction of its own: its offsets are committed with the next batch that has outputs, or when
  the input goes quiet (a poll that finds nothing), or after `CARRY_SECONDS`. Until then a crash or
  a rebalance only makes the hop read those records again, and they have no outputs.
- Revocation waits until the batch in flight is committed (drain on rebalance).
- A broker outage is ridden out, not crashed on (`pipeline.exactly_once`): the hop waits for the
  broker, and a batch whose transaction failed is redone from the last committed offsets.
"""
from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from pipeline.blobstore import FileBlobStore
from pipeline.bus import PartitionBackoff, Topics, hold_partition
from pipeline.deadletter import PoisonMessage, deadletter_event
from pipeline.exactly_once import BATCH_FAILURES, ExactlyOnceLoop
from pipeline.metrics import HopMetrics
from pipeline.settings import Settings
from schemas.events import Event, encode_event

__all__ = ["TransactionalHop", "Output", "Hold", "PoisonMessage"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Output:
    topic: str
    key: bytes
    event: Event
    headers: tuple[tuple[str, bytes], ...] = ()  # record headers (the chain marks its stage_results: pipeline.chain)


class Hold(Exception):
    """The record is fine but not for now (a retry not yet due): try it again after `delay` seconds."""

    def __init__(self, delay: float) -> None:
        super().__init__(f"held for {delay:.1f}s")
        self.delay = delay


GATHER_BYTES = 64 * 1024  # what a gathering hop's fetch waits for (see `gather_ms`)
CARRY_SECONDS = 5.0  # the longest the offsets of batches without outputs wait for a transaction


class TransactionalHop:
    """Subclasses implement `handle`; `temporary_errors` are retried with backoff, never skipped."""

    temporary_errors: tuple[type[BaseException], ...] = (TimeoutError, ConnectionError)
    # records handled at the same time at most; the services (retry, bounce, verdict) read tables
    # while handling, so they take one record after another. The stage runner lifts this.
    max_concurrency: int = 1
    # > 0: the broker holds a fetch until 64 KiB are there or this many ms have passed, so a hop whose
    # work may wait (a DSN) takes bigger batches and pays fewer transactions; 0: answered at once
    gather_ms: int = 0
    component_prefix = ""  # the component is `<prefix><name>` (the stage runner's: ``stage:``)

    def __init__(self, settings: Settings, name: str, input_topics: list[str], instance: str = "0",
                 timeout: float | None = None) -> None:
        self.settings = settings
        self.name = name
        self.input_topics = input_topics
        self.group_id = f"{settings.kafka.topic_prefix}.{name}"
        self.transactional_id = f"{self.group_id}.{instance}"
        r = settings.runner
        self.backoff = PartitionBackoff(r.tempfail_backoff_initial, r.tempfail_backoff_max)
        self.timeout = timeout if timeout is not None else r.handle_timeout  # seconds per record
        self.deadletter_topic = Topics.from_settings(settings).deadletter
        self.blobs = FileBlobStore(settings.home / "blobs")  # for dead letters too large for an event
        self.deadlettered = 0
        self._lock = asyncio.Lock()
        # offsets past batches without outputs, for the next transaction; since when (monotonic)
        self._carried: dict[TopicPartition, int] = {}
        self._carried_since = 0.0
        self.metrics = HopMetrics(f"{self.component_prefix}{name}", self.group_id, settings.metrics.lag_interval)

    async def handle(self, record: ConsumerRecord) -> list[Output]:  # pragma: no cover - abstract
        raise NotImplementedError

    async def start(self) -> None:
        """Called once before consuming (open scanners, read a ledger, ...)."""

    async def close(self) -> None:
        """Called once after consuming."""

    async def before_batch(self) -> None:
        """Called before each batch (e.g. to catch up on a table)."""

    async def run(self, stop: asyncio.Event, on_ready: Callable[[], None] | None = None) -> None:
        r = self.settings.runner
        loop = ExactlyOnceLoop(self.settings.kafka, name=self.name, group_id=self.group_id,
                               transactional_id=self.transactional_id, topics=self.input_topics,
                               max_records=r.batch_size, poll_timeout_ms=r.poll_timeout_ms, lock=self._lock,
                               on_assigned=self._forget_carried,  # another generation: read them again
                               consumer_options=dict(fetch_min_bytes=GATHER_BYTES, fetch_max_wait_ms=self.gather_ms)
                               if self.gather_ms > 0 else None)
        try:
            await loop.open()
            await self.start()
            log.info("%s consuming %s as %s", self.name, ", ".join(self.input_topics), self.group_id)
            if on_ready:
                on_ready()

            async def one_batch(batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
                try:
                    await self.before_batch()
                    await self._process_batch(loop.consumer, loop.producer, batch)
                except BATCH_FAILURES:
                    await self._forget_carried()  # the loop rewinds to the committed offsets
                    raise

            async with self.metrics.lag_of(lambda: loop.consumer):  # metrics: the group's lag
                await loop.consume(stop, one_batch, idle=lambda: self._commit_quiet(loop.producer))
        finally:
            await self.close()
            await loop.close()

    async def _process_batch(self, consumer, producer, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        """Handle the batch's records (up to `concurrency` at once), then commit their outputs and
        offsets in record order, each partition up to its first record that must wait."""
        handled = self._handle_all(batch)
        offsets: dict[TopicPartition, int] = {}
        outputs: list[Output] = []
        try:
            for tp, records in batch.items():
                for record, attempt in zip(records, handled[tp]):
                    try:
                        outputs.extend(await attempt)
                    except Hold as hold:
                        hold_partition(consumer, tp, record.offset, hold.delay)
                        break
                    except self.temporary_errors as exc:
                        self._retry_later(consumer, tp, record, exc)
                        break
                    offsets[tp] = record.offset + 1
                    self.backoff.reset(tp)
            if not offsets:
                return
            if not self._carried:
                self._carried_since = time.monotonic()
            self._carried.update(offsets)
            if outputs or time.monotonic() - self._carried_since >= CARRY_SECONDS:
                await self._commit_carried(producer, outputs)
        finally:  # records after a partition's first wait are handled again later: drop their work
            tasks = []
            for attempt in (a for attempts in handled.values() for a in attempts):
                if isinstance(attempt, asyncio.Task):
                    attempt.cancel()  # (a no-op for one that is done)
                    tasks.append(attempt)
                else:
                    attempt.close()  # a coroutine not awaited yet never runs (closing an awaited one: no-op)
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _commit_carried(self, producer, outputs: Sequence[Output] = ()) -> None:
        """One transaction: `outputs` and every offset carried so far."""
        async with producer.transaction():
            for out in outputs:
                await producer.send(out.topic, encode_event(out.event), key=out.key, headers=list(out.headers) or None)
            await producer.send_offsets_to_transaction(dict(self._carried), self.group_id)
        self._carried.clear()

    async def _commit_quiet(self, producer) -> None:
        """The input went quiet: commit the offsets carried so far, if any."""
        if self._carried:
            await self._commit_carried(producer)

    async def _forget_carried(self) -> None:
        """Drop the offsets not committed yet: their records are read again (and have no outputs)."""
        self._carried.clear()

    @property
    def concurrency(self) -> int:
        """Records handled at the same time: `runner.concurrency`, or less if the hop asks for less."""
        return max(1, min(self.settings.runner.concurrency, self.max_concurrency))

    def _handle_all(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> dict[TopicPartition, list[Awaitable]]:
        """Per record the awaitable of its `outputs_of`: tasks, at most `concurrency` running at once;
        with a concurrency of 1, coroutines that run only when the transaction awaits them."""
        if self.concurrency == 1:
            return {tp: [self.outputs_of(r) for r in records] for tp, records in batch.items()}
        slots = asyncio.Semaphore(self.concurrency)

        async def attempt(record: ConsumerRecord) -> list[Output]:
            async with slots:
                return await self.outputs_of(record)

        return {tp: [asyncio.ensure_future(attempt(r)) for r in records] for tp, records in batch.items()}

    async def outputs_of(self, record: ConsumerRecord) -> list[Output]:
        """`_outputs_of`, measured: its duration; processed (dead letters too), or retried."""
        with self.metrics.handling():
            return await self._outputs_of(record)

    async def _outputs_of(self, record: ConsumerRecord) -> list[Output]:
        """`handle` within the timeout; a record it cannot handle becomes its dead letter.

        Raises only `Hold` and the temporary errors (the record is then tried again later).
        """
        try:
            async with asyncio.timeout(self.timeout):
                return await self.handle(record)
        except (Hold, *self.temporary_errors, *BATCH_FAILURES):  # broker trouble is not the record's fault
            raise
        except PoisonMessage as exc:
            return [await self._deadletter(record, exc.reason, str(exc), exc.consumer)]
        except Exception as exc:  # a bug, or a record the hop chokes on: a person must look
            log.exception("%s failed on %s[%d]@%d", self.name, record.topic, record.partition, record.offset)
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            return [await self._deadletter(record, "exception", detail)]

    def _retry_later(self, consumer, tp: TopicPartition, record: ConsumerRecord, exc: BaseException) -> None:
        delay = self.backoff.next_delay(tp)
        why = f"no answer within {self.timeout:g}s" if isinstance(exc, TimeoutError) and not str(exc) else exc
        log.warning("%s: temporary failure at %s[%d]@%d (%s: %s); retrying in %.1fs", self.name, tp.topic,
                    tp.partition, record.offset, type(exc).__name__, why, delay)
        hold_partition(consumer, tp, record.offset, delay)

    async def _deadletter(self, record: ConsumerRecord, reason: str, error: str, consumer: str = "") -> Output:
        """The record, whole, for the dead-letter topic (same key, so it sorts with its message)."""
        consumer = consumer or self.name
        self.deadlettered += 1
        self.metrics.deadlettered(reason)
        log.warning("%s: dead-lettering %s[%d]@%d: %s: %s", consumer, record.topic, record.partition,
                    record.offset, reason, error)
        try:
            event = await asyncio.to_thread(deadletter_event, record, consumer, reason, error, self.blobs)
        except OSError as exc:  # a large record's value could not be stored: try the record again later
            raise ConnectionError(f"cannot store the dead letter in the blob store: {exc}") from exc
        return Output(self.deadletter_topic, record.key or b"", event)
