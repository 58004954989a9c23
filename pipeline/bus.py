"""The Kafka bus: topic names, client construction, topic creation.

Every producer and consumer in poststelle is built here, so limits (request and fetch sizes),
durability (`acks=all`, idempotence) and isolation (`read_committed`) are set in one place.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.structs import ConsumerRecord

from pipeline.settings import DESTINATIONS, KafkaSettings, Settings

__all__ = ["Topics", "make_producer", "make_transactional_producer", "make_consumer",
           "make_admin", "ensure_topics", "DrainOnRevoke", "PartitionBackoff", "hold_partition", "topic_partitions",
           "behind", "read_topic", "MetadataProbe", "kafka_bound", "start_or_release", "stop_quietly"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names, derived from the prefix and the topology (the stage order is data)."""

    prefix: str
    stages: tuple[str, ...]
    destinations: tuple[str, ...] = DESTINATIONS
    retry_delays: tuple[str, ...] = ()
    quarantine_days: int = 37  # kept on the quarantine topic: the entries' lifetime and a week

    @classmethod
    def from_settings(cls, settings: Settings) -> "Topics":
        delays = tuple(dict.fromkeys(settings.delivery.retry_schedule))
        days = int(settings.quarantine.lifetime_seconds // 86_400) + 7
        return cls(settings.kafka.topic_prefix, tuple(settings.topology.stages),
                   destinations=settings.destination_names, retry_delays=delays, quarantine_days=days)

    def _t(self, name: str) -> str:
        return f"{self.prefix}.{name}"

    @property
    def received(self) -> str:
        return self._t("received")

    def checked(self, stage: str) -> str:
        """Where `stage` writes the messages it passed on (stage_result events)."""
        return self._t(f"checked.{stage}")

    def stage_input(self, stage: str) -> str:
        index = self.stages.index(stage)
        return self.received if index == 0 else self.checked(self.stages[index - 1])

    def routed(self, destination: str) -> str:
        return self._t(f"routed.{destination}")

    @property
    def delivery(self) -> str:
        """delivery_attempt, delivered, deferred and bounced events."""
        return self._t("delivery")

    @property
    def ledger(self) -> str:
        """Compacted: the last delivery state per (message, recipient, destination)."""
        return self._t("ledger")

    def retry(self, delay_name: str) -> str:
        """Deferred deliveries waiting `delay_name` (e.g. "5m") before their next attempt."""
        return self._t(f"retry.{delay_name}")

    @property
    def rejected(self) -> str:
        return self._t("rejected")

    @property
    def quarantine(self) -> str:
        return self._t("quarantine")

    @property
    def deadletter(self) -> str:
        return self._t("deadletter")

    @property
    def sessions(self) -> str:
        """SMTP session events (connect, reject) for analytics."""
        return self._t("sessions")

    @property
    def outcomes(self) -> str:
        """Terminal outcomes per message (stages write them; every ingress reads them all)."""
        return self._t("outcomes")

    @property
    def accepted_early(self) -> str:
        """Compacted: messages the ingress accepted before their verdict (see consumers/sinks/verdict.py)."""
        return self._t("accepted_early")

    @property
    def greylist_triplets(self) -> str:
        """Compacted: greylisting state per (client network, sender, recipient)."""
        return self._t("greylist.triplets")

    @property
    def greylist_clients(self) -> str:
        """Compacted: greylisting auto-whitelist counters per client network and sender domain."""
        return self._t("greylist.clients")

    @property
    def sitelist_block(self) -> str:
        """Compacted: the site's own block list (`poststelle list`), keyed "<kind>:<value>"."""
        return self._t("sitelist.block")

    @property
    def sitelist_allow(self) -> str:
        """Compacted: the site's own allow list (`poststelle list`), keyed "<kind>:<value>"."""
        return self._t("sitelist.allow")

    @property
    def users(self) -> str:
        """Compacted: per-user settings (`user_settings` events), keyed by the address; analytics keeps
        every change."""
        return self._t("users")

    @property
    def spam_learn(self) -> str:
        """Compacted: what the spam stage's Bayes model learned (spam_learned events), keyed by message digest."""
        return self._t("spam.learn")

    def event_topics(self) -> list[str]:
        """Every topic that carries events analytics records: all but the compacted state tables, except
        `users`, whose records are events and whose history compaction would lose."""
        return [
            self.received,
            *(self.checked(s) for s in self.stages),
            *(self.routed(d) for d in self.destinations),
            *(self.retry(d) for d in self.retry_delays),
            self.delivery,
            self.rejected,
            self.quarantine,
            self.deadletter,
            self.sessions,
            self.users,
        ]

    def all_topics(self) -> list[str]:
        return [*self.event_topics(), self.outcomes, self.ledger, self.greylist_triplets,
                self.greylist_clients, self.sitelist_block, self.sitelist_allow, self.accepted_early,
                self.spam_learn]

    def compacted(self) -> set[str]:
        return {self.ledger, self.greylist_triplets, self.greylist_clients, self.sitelist_block,
                self.sitelist_allow, self.accepted_early, self.users, self.spam_learn}

    def configs(self, name: str) -> dict[str, str]:
        """Topic configuration at creation: compaction for the state tables."""
        if name == self.accepted_early:  # needed only until the verdict service looked: a week
            return {"cleanup.policy": "compact,delete", "retention.ms": str(7 * 86_400_000)}
        if name == self.quarantine:  # the entries and what happened to them, for their whole lifetime
            return {"retention.ms": str(self.quarantine_days * 86_400_000)}
        return {"cleanup.policy": "compact"} if name in self.compacted() else {}


def _common(k: KafkaSettings, client_id: str) -> dict:
    return {
        "bootstrap_servers": k.bootstrap,
        "client_id": f"{k.client_id}-{client_id}",
        "request_timeout_ms": k.request_timeout_ms,
    }


def make_producer(k: KafkaSettings, client_id: str, *, linger_ms: int = 2) -> AIOKafkaProducer:
    """A durable producer: a send completes only when every in-sync replica has the record."""
    return AIOKafkaProducer(
        **_common(k, client_id),
        acks="all",
        enable_idempotence=True,
        max_request_size=k.max_request_size,
        linger_ms=linger_ms,
    )


# records of a transaction wait for its end (`pipeline.producers`), which sends them in one request
TRANSACTION_LINGER_MS = 1000
# ... unless a partition's batch fills up first: aiokafka sends a full batch at once, in a request of
# its own (and an AddPartitionsToTxn). A chain's batch of 20 messages holds about 90 KB of `routed`
# events for one destination's partition; aiokafka's default is 16 KiB
TRANSACTION_BATCH_BYTES = 256 * 1024


def make_transactional_producer(k: KafkaSettings, transactional_id: str) -> AIOKafkaProducer:
    """A producer for consume → produce hops: outputs and input offsets commit atomically.

    A restarted process with the same `transactional_id` fences its previous incarnation and aborts
    whatever transaction it left open.
    """
    return AIOKafkaProducer(
        **_common(k, transactional_id),
        acks="all",
        enable_idempotence=True,
        transactional_id=transactional_id,
        max_request_size=k.max_request_size,
        linger_ms=TRANSACTION_LINGER_MS,
        max_batch_size=TRANSACTION_BATCH_BYTES,
    )


# how long the broker holds a fetch that finds nothing new (aiokafka's default: 500 ms). A fetch
# returns as soon as a record arrives, so this costs no latency; it only makes the idle consumers
# (the sinks of destinations with no mail right now, the services, the table readers) ask four
# times less often: on the local stack a third less idle CPU, the broker's included. A partition
# resumed after a hold joins the next fetch, up to this much later.
IDLE_FETCH_WAIT_MS = 2000


def make_consumer(k: KafkaSettings, group_id: str | None, client_id: str, **extra) -> AIOKafkaConsumer:
    """A consumer that reads only committed records and never commits on its own."""
    return AIOKafkaConsumer(
        **_common(k, client_id),
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_partition_fetch_bytes=k.max_partition_fetch_bytes,
        fetch_max_bytes=max(52_428_800, k.max_partition_fetch_bytes),
        # (at most half the request timeout, which a held fetch must not run into)
        **{"fetch_max_wait_ms": min(IDLE_FETCH_WAIT_MS, k.request_timeout_ms // 2), **extra},
    )


def make_admin(k: KafkaSettings, client_id: str) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**_common(k, client_id))


def kafka_bound(k: KafkaSettings) -> float:
    """Seconds one wait for the broker may take before the work in flight is given up (twice the
    request timeout: aiokafka retries a request that timed out once)."""
    return 2 * k.request_timeout_ms / 1000


async def start_or_release(client: AIOKafkaProducer | AIOKafkaConsumer, bound: float) -> None:
    """Start a client within `bound` seconds, or release what it opened and raise (broker away)."""
    try:
        async with asyncio.timeout(bound):
            await client.start()
    except BaseException:
        await stop_quietly(client, bound)
        raise


async def stop_quietly(client: AIOKafkaProducer | AIOKafkaConsumer, timeout: float = 5.0) -> None:
    """Stop a Kafka client within `timeout`; the broker may be gone, the client is dropped either way."""
    try:
        await asyncio.wait_for(client.stop(), timeout)
    except Exception as exc:
        log.debug("stopping a Kafka client: %s", exc)
    except asyncio.CancelledError:
        # aiokafka's consumer awaits the fetch tasks it has just cancelled: while the broker is away
        # their CancelledError escapes `stop()`. Only a cancellation of this task itself goes on.
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
        log.debug("stopping a Kafka client: cancelled inside the client")


class MetadataProbe:
    """Asks the broker for its cluster metadata: fails at once while the broker is unreachable.

    The probe of `BrokerWatch.monitor`. It has a client of its own (one connection), made afresh
    after a failure, so it says nothing about the state of the component's own clients.
    """

    def __init__(self, k: KafkaSettings, client_id: str) -> None:
        self.kafka, self.client_id = k, client_id
        self._client: AIOKafkaClient | None = None

    async def __call__(self) -> None:
        try:
            async with asyncio.timeout(self.kafka.request_timeout_ms / 1000):
                if self._client is None:
                    self._client = AIOKafkaClient(**_common(self.kafka, f"{self.client_id}-probe"))
                    await self._client.bootstrap()
                await self._client.fetch_all_metadata()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()


class DrainOnRevoke(ConsumerRebalanceListener):
    """Rebalance listener: partitions go only after the batch in flight committed.

    The consumer loop holds `lock` while it processes a batch; revocation waits for the same lock.
    `on_assigned` runs when partitions arrive (e.g. to catch up on a ledger).
    """

    def __init__(self, lock: asyncio.Lock, on_assigned: Callable[[], Awaitable[object]] | None = None) -> None:
        self.lock, self.on_assigned = lock, on_assigned

    async def on_partitions_revoked(self, revoked) -> None:
        async with self.lock:
            pass

    async def on_partitions_assigned(self, assigned) -> None:
        if self.on_assigned is not None:
            await self.on_assigned()


class PartitionBackoff:
    """Per-partition exponential backoff for temporary failures (doubling up to `maximum`)."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial, self.maximum = initial, maximum
        self._current: dict[TopicPartition, float] = {}

    def next_delay(self, tp: TopicPartition) -> float:
        delay = min(self._current.get(tp, self.initial / 2) * 2, self.maximum)
        self._current[tp] = delay
        return delay

    def reset(self, tp: TopicPartition) -> None:
        self._current.pop(tp, None)


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """Every partition of `topic`, for a consumer that assigns them itself (no group); [] if none.

    A topic created a moment ago may not be in the consumer's metadata yet: it asks once more.
    """
    found = consumer.partitions_for_topic(topic)
    if not found:
        await consumer._client.force_metadata_update()  # aiokafka has no public call for this
        found = consumer.partitions_for_topic(topic)
    return [TopicPartition(topic, p) for p in sorted(found or ())]


async def behind(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    """Whether the consumer has not yet read up to `ends` (end offsets) in some partition."""
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return True
    return False


async def read_topic(k: KafkaSettings, topic: str, client_id: str) -> list[ConsumerRecord]:
    """Every record of `topic` written up to now, all partitions, without a consumer group (for commands)."""
    reader = make_consumer(k, None, client_id)
    await reader.start()
    try:
        tps = await topic_partitions(reader, topic)
        if not tps:
            return []
        reader.assign(tps)
        await reader.seek_to_beginning(*tps)
        ends = await reader.end_offsets(tps)
        records: list[ConsumerRecord] = []
        while await behind(reader, ends):
            for batch in (await reader.getmany(timeout_ms=500)).values():
                records.extend(batch)
        return records
    finally:
        await reader.stop()


def hold_partition(consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int, delay: float) -> None:
    """Rewind `tp` to `offset` and pause it for `delay` seconds; the rest of the assignment goes on."""
    consumer.seek(tp, offset)
    consumer.pause(tp)
    asyncio.get_running_loop().call_later(delay, _resume_if_assigned, consumer, tp)


def _resume_if_assigned(consumer: AIOKafkaConsumer, tp: TopicPartition) -> None:
    if tp in consumer.assignment():
        consumer.resume(tp)


async def ensure_topics(settings: Settings, timeout: float = 60.0) -> None:
    """Create every topic of the topology that does not exist yet (idempotent); returns when the
    broker lists them, so a client may use them at once."""
    k = settings.kafka
    topics = Topics.from_settings(settings)
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        admin = AIOKafkaAdminClient(**_common(k, "admin"))
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            wanted = [
                NewTopic(
                    name,
                    k.partitions,
                    k.replication_factor,
                    topic_configs=topics.configs(name),
                )
                for name in topics.all_topics()
                if name not in existing
            ]
            if wanted:
                try:
                    await admin.create_topics(wanted)
                except TopicAlreadyExistsError:
                    pass  # another process created it first
                log.info("created topics %s", ", ".join(t.name for t in wanted))
                # the controller made them; the broker's metadata has them a moment later
                while not {t.name for t in wanted} <= set(await admin.list_topics()):
                    if asyncio.get_running_loop().time() > deadline:
                        raise KafkaError("the created topics are not listed by the broker")
                    await asyncio.sleep(0.05)
            return
        except KafkaError as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise
            log.info("broker not ready for topic creation (%s); retrying", exc)
            await asyncio.sleep(1.0)
        finally:
            await admin.close()
