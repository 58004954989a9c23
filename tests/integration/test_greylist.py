"""The greylist store on the real broker: two ingress instances share the state through the compacted
topics, a restarted instance replays it, the sweep's tombstones become the topics' latest values.

Each test works under its own topic prefix (created with `ensure_topics`, deleted at the end) on the
session stack's Kafka; run with POSTSTELLE_TEST_BASE set to a base of your own.
"""
from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from ingress.checks import CheckContext, CheckServices
from ingress.checks.greylist import GreylistCheck, GreylistSettings
from ingress.greylist_store import (
    CLIENTS,
    DELAYED,
    PASSED,
    PASSED_AFTER_RETRY,
    TRIPLETS,
    GreylistStore,
    KafkaTransport,
    client_key,
    domain_key,
    triplet_key,
)
from pipeline.bus import Topics, ensure_topics
from pipeline.settings import KafkaSettings, Settings

pytestmark = pytest.mark.timeout(180)

T0 = 1_700_000_000.0
NET, SENDER, RCPT = "192.0.2.10/32", "alice@example.org", "max.mustermann@school.test"
KEY = triplet_key(NET, SENDER, RCPT)


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def until(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def settings(stack) -> AsyncIterator[Settings]:
    """Settings on the stack's broker under a fresh topic prefix, its topics created and then deleted."""
    kafka = KafkaSettings(bootstrap=stack.bootstrap, topic_prefix=f"scratch.greylist-{uuid.uuid4().hex[:8]}",
                          partitions=2, request_timeout_ms=4000)
    made = Settings(kafka=kafka)
    await ensure_topics(made, timeout=30)
    yield made
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap)
    await admin.start()
    try:
        await admin.delete_topics(Topics.from_settings(made).all_topics())
    finally:
        await admin.close()


def tables(settings: Settings) -> dict[str, str]:
    topics = Topics.from_settings(settings)
    return {TRIPLETS: topics.greylist_triplets, CLIENTS: topics.greylist_clients}


def store_on(settings: Settings, clock: Clock, name: str) -> GreylistStore:
    check_settings = GreylistSettings()
    return GreylistStore(KafkaTransport(settings.kafka, tables(settings), client_id=f"greylist-test-{name}"),
                         check_settings.policy(), clock=clock, sweep_every=3600)


async def latest_values(settings: Settings, table: str) -> dict[str, bytes | None]:
    """What compaction keeps of a table: the last value per key, read from the beginning."""
    latest: dict[str, bytes | None] = {}

    def keep(record_table: str, key: str, value: bytes | None) -> None:
        if record_table == table:
            latest[key] = value

    reader = KafkaTransport(settings.kafka, tables(settings), client_id="greylist-test-reader")
    try:
        await reader.open()
        await asyncio.wait_for(reader.read_to_end(keep), 30)
    finally:
        await reader.close()
    return latest


async def test_greylist_topics_are_compacted(settings: Settings, stack) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap)
    await admin.start()
    try:
        resources = [ConfigResource(ConfigResourceType.TOPIC, topic) for topic in tables(settings).values()]
        responses = await admin.describe_configs(resources)
    finally:
        await admin.close()
    policies = {}
    for response in responses:
        for resource in response.resources:
            _, _, _, name, entries = resource[:5]
            policies[name] = {entry[0]: entry[1] for entry in entries}["cleanup.policy"]
    assert policies == {topic: "compact" for topic in tables(settings).values()}


async def test_a_triplet_delayed_at_one_instance_passes_at_the_other(settings: Settings) -> None:
    """Two checks as two ingress instances build their own stores on Kafka (the real clock, delay 1s)."""
    config = GreylistSettings(delay="1s", startup_timeout="30s")
    a = GreylistCheck(config, CheckServices(settings=settings))
    b = GreylistCheck(config, CheckServices(settings=settings))
    await a.start()
    await b.start()
    try:
        assert a.store.ready and b.store.ready
        ctx = CheckContext(session_id="s", client_ip="192.0.2.10", sender=SENDER)
        decision = await a.rcpt(ctx, RCPT)
        assert (decision.reason_code, ctx.notes["greylist"]) == ("greylisted", "delayed")
        await until(lambda: KEY in b.store.triplets, what="instance B to learn the triplet")
        await asyncio.sleep(1.0)
        decision = await b.rcpt(ctx, RCPT)
        assert (decision.refused, ctx.notes["greylist"]) == (False, "passed_after_retry")
        await until(lambda: a.store.triplets[KEY].passes == 1, what="instance A to learn the pass")
        decision = await a.rcpt(ctx, RCPT)
        assert (decision.refused, ctx.notes["greylist"]) == (False, "passed")
    finally:
        await a.close()
        await b.close()


async def test_a_restarted_store_replays_and_tombstones_remove_expired_entries(settings: Settings) -> None:
    clock = Clock()
    a, b = store_on(settings, clock, "a"), store_on(settings, clock, "b")
    assert await a.start(30) and await b.start(30)
    try:
        assert a.decide(NET, SENDER, RCPT).outcome == DELAYED
        await until(lambda: KEY in b.triplets, what="B to learn the triplet")
        clock.now += 300
        assert b.decide(NET, SENDER, RCPT).outcome == PASSED_AFTER_RETRY
        await until(lambda: a.triplets.get(KEY) == b.triplets[KEY] and len(a.clients) == 2,
                    what="A to learn the pass")
        await a.close()

        restarted = store_on(settings, clock, "a2")
        assert await restarted.start(30)
        try:
            assert restarted.triplets == b.triplets
            assert set(restarted.clients) == {client_key(NET), domain_key("example.org", NET)}
            assert restarted.clients == b.clients
            assert restarted.decide(NET, SENDER, RCPT).outcome == PASSED

            clock.now += 35 * 86_400 + 1  # the lifetime is over for every entry
            assert restarted.sweep() == 3
        finally:
            await restarted.close()  # hands the tombstones to the broker first

        for table, keys in ((TRIPLETS, [KEY]), (CLIENTS, [client_key(NET), domain_key("example.org", NET)])):
            latest = await latest_values(settings, table)
            assert {key: latest[key] for key in keys} == {key: None for key in keys}
        await until(lambda: not b.triplets and not b.clients, what="B to apply the tombstones")
    finally:
        await a.close()
        await b.close()


def _port_nobody_listens_on() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_unreachable_broker_at_start_answers_451() -> None:
    kafka = KafkaSettings(bootstrap=f"127.0.0.1:{_port_nobody_listens_on()}", request_timeout_ms=1000)
    check = GreylistCheck(GreylistSettings(startup_timeout="2s"), CheckServices(settings=Settings(kafka=kafka)))
    await check.start()
    try:
        assert not check.store.ready
        ctx = CheckContext(session_id="s", client_ip="192.0.2.10", sender=SENDER)
        decision = await check.rcpt(ctx, RCPT)
        assert decision.reply == "451 4.7.1 Greylisting state unavailable, please try again later"
        assert (decision.reason_code, ctx.notes["greylist"]) == ("greylist_unavailable", "unavailable")
    finally:
        await asyncio.wait_for(check.close(), 15)
