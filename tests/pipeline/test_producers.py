"""Producers that fail closed (pipeline/producers.py), over a stand-in for aiokafka's producer.

The stand-in behaves as aiokafka 0.14 does during an outage (measured against a real broker, see
docs/architecture.md "Broker outages"): `send` queues and returns a future, a record's failure
fails only that future, and `commit_transaction` commits whatever the broker holds.
"""
from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import LeaderNotAvailableError

from pipeline.broker import BrokerUnavailable
from pipeline.producers import RenewingProducer, TransactionalProducer
from pipeline.settings import KafkaSettings

KAFKA = KafkaSettings(request_timeout_ms=50)  # every wait for the "broker" is bounded by 0.1 s


class _Client:
    async def close(self) -> None:
        pass


class StandInBatch:
    """aiokafka's BatchBuilder as the code sees it: `append` answers None once it is full."""

    def __init__(self, capacity: int = 3) -> None:
        self.capacity = capacity
        self.keys: list[bytes] = []
        self.values: list[bytes] = []

    def append(self, *, key: bytes, value: bytes, timestamp: int | None) -> dict | None:
        if len(self.values) >= self.capacity:
            return None
        self.keys.append(key)
        self.values.append(value)
        return {"offset": len(self.values) - 1}


class StandInProducer:
    """What the code under test sees of an AIOKafkaProducer; records what was done to it."""

    def __init__(self, outcomes: list[str]) -> None:
        self.outcomes = outcomes  # per record sent: "ok", "fail" (its batch expired) or "hang" (no answer)
        self.sent: list[bytes] = []
        self.offsets: list[dict] = []
        self.batches: list[tuple[int, list[bytes]]] = []  # send_batch: (partition, keys)
        self.committed = self.started = self.stopped = False
        self._closed = False
        self._sender = None
        self.client = _Client()

    async def start(self) -> None:
        await asyncio.sleep(0.01)  # a round trip to the broker
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def begin_transaction(self) -> None:
        pass

    async def send(self, topic: str, value: bytes, key: bytes | None = None, headers=None) -> asyncio.Future:
        outcome = self.outcomes[len(self.sent)] if len(self.sent) < len(self.outcomes) else "ok"
        self.sent.append(value)
        delivery = asyncio.get_running_loop().create_future()
        if outcome == "ok":
            delivery.set_result(None)
        elif outcome == "fail":
            delivery.set_exception(LeaderNotAvailableError())
        return delivery

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2, 3}

    def create_batch(self) -> "StandInBatch":
        return StandInBatch()

    async def send_batch(self, batch: "StandInBatch", topic: str, *, partition: int) -> asyncio.Future:
        """A batch fails (or hangs) when one of its records' turns in `outcomes` says so."""
        turns = [self.outcomes[k] for k in range(len(self.sent), len(self.sent) + len(batch.values))
                 if k < len(self.outcomes)]
        self.sent.extend(batch.values)
        self.batches.append((partition, list(batch.keys)))
        delivery = asyncio.get_running_loop().create_future()
        if "fail" in turns:
            delivery.set_exception(LeaderNotAvailableError())
        elif "hang" not in turns:
            delivery.set_result(None)
        return delivery

    async def send_offsets_to_transaction(self, offsets, group_id) -> None:
        self.offsets.append(offsets)

    async def commit_transaction(self) -> None:
        self.committed = True


class Factory:
    def __init__(self, *outcomes: list[str]) -> None:
        self.outcomes = list(outcomes)
        self.made: list[StandInProducer] = []

    def __call__(self, kafka: KafkaSettings, name: str) -> StandInProducer:
        producer = StandInProducer(self.outcomes.pop(0) if self.outcomes else [])
        self.made.append(producer)
        return producer


async def _batch(tx: TransactionalProducer, values: list[bytes]) -> None:
    async with tx.transaction() as producer:
        for value in values:
            await producer.send("out", value, key=b"k")
        await producer.send_offsets_to_transaction({TopicPartition("in", 0): 7}, "group")


async def test_a_transaction_commits_once_every_record_is_acknowledged():
    factory = Factory(["ok", "ok"])
    tx = TransactionalProducer(KAFKA, "stage.0", make=factory)
    await _batch(tx, [b"a", b"b"])
    assert factory.made[0].committed and factory.made[0].sent == [b"a", b"b"]


async def test_a_transaction_with_a_failed_record_is_not_committed_and_its_producer_not_reused():
    """aiokafka would commit it without the record (measured: 99 of 600 outputs missing)."""
    factory = Factory(["ok", "fail", "ok"])
    tx = TransactionalProducer(KAFKA, "stage.0", make=factory)
    with pytest.raises(LeaderNotAvailableError):
        await _batch(tx, [b"a", b"b", b"c"])
    first = factory.made[0]
    assert not first.committed and first._closed, "abandoned, not committed"
    await _batch(tx, [b"a", b"b", b"c"])  # the batch redone: a successor fences the first
    assert len(factory.made) == 2 and factory.made[1].committed


async def test_a_record_without_an_answer_gives_the_transaction_up_within_the_bound():
    factory = Factory(["ok", "hang"])
    tx = TransactionalProducer(KAFKA, "stage.0", make=factory)
    with pytest.raises(BrokerUnavailable, match="within"):
        await asyncio.wait_for(_batch(tx, [b"a", b"b"]), 2)
    assert not factory.made[0].committed and not tx.started


async def test_a_failing_body_discards_the_producer_without_committing():
    factory = Factory()
    tx = TransactionalProducer(KAFKA, "stage.0", make=factory)
    with pytest.raises(RuntimeError):
        async with tx.transaction() as producer:
            await producer.send("out", b"a")
            raise RuntimeError("the stage failed")
    assert not factory.made[0].committed and factory.made[0]._closed


async def test_a_renewing_producer_is_replaced_after_a_failed_record():
    """After an expired batch aiokafka's idempotent producer fails every later record to the partition."""
    factory = Factory(["fail"], ["ok"])
    producer = RenewingProducer(KAFKA, "ledger", make=factory)
    with pytest.raises(LeaderNotAvailableError):
        await (await producer.send("ledger", b"a"))
    await (await producer.send("ledger", b"a"))
    assert len(factory.made) == 2 and factory.made[0]._closed and not factory.made[0].stopped
    assert factory.made[1].sent == [b"a"]


async def test_a_renewing_producer_given_up_on_is_replaced():
    factory = Factory(["hang"], ["ok"])
    producer = RenewingProducer(KAFKA, "ledger", make=factory)
    await producer.send("ledger", b"a")
    producer.spend()
    await (await producer.send("ledger", b"a"))
    assert len(factory.made) == 2 and factory.made[0]._closed


async def test_a_renewing_producer_keeps_a_producer_that_works():
    factory = Factory()
    producer = RenewingProducer(KAFKA, "ledger", make=factory)
    for value in (b"a", b"b", b"c"):
        await (await producer.send("ledger", value))
    await producer.stop()
    assert len(factory.made) == 1 and factory.made[0].stopped



async def test_concurrent_senders_share_one_producer():
    """(Each starting its own left all but one running unclosed: 'Task was destroyed but it is pending'.)"""
    factory = Factory()
    producer = RenewingProducer(KAFKA, "ingress-sessions", make=factory)
    deliveries = await asyncio.gather(*(producer.send("sessions", b"%d" % i) for i in range(10)))
    await asyncio.gather(*deliveries)
    assert len(factory.made) == 1 and len(factory.made[0].sent) == 10


async def test_transactions_take_turns_between_the_producers_of_a_rotation():
    """Back to back on one transactional id, aiokafka waits 20 ms for the last one's markers."""
    factory = Factory()
    names: list[str] = []

    def make(kafka, name):
        names.append(name)
        return factory(kafka, name)

    tx = TransactionalProducer(KAFKA, "stage.0", make=make, rotation=2)
    for value in (b"a", b"b", b"c"):
        await _batch(tx, [value])
    assert names == ["stage.0", "stage.0.r1"]  # both registered (and fenced) at the start
    first, second = factory.made
    assert first.sent == [b"a", b"c"] and second.sent == [b"b"]
    assert first.committed and second.committed


async def test_a_failed_transaction_in_a_rotation_discards_every_producer():
    """The successors (same ids) fence them all; the next transaction starts again with the first id."""
    factory = Factory([], ["fail"])
    tx = TransactionalProducer(KAFKA, "stage.0", make=factory, rotation=2)
    await _batch(tx, [b"a"])
    with pytest.raises(LeaderNotAvailableError):
        await _batch(tx, [b"b"])
    assert all(p._closed for p in factory.made) and not tx.started
    await _batch(tx, [b"b"])
    assert len(factory.made) == 4 and factory.made[2].sent == [b"b"] and factory.made[2].committed


async def test_the_transactions_records_are_sent_at_its_end_through_aiokafkas_accumulator():
    """Transactional producers linger until the transaction ends; `_send_now` relies on this aiokafka
    internal (an upgrade without it would make every transaction wait out the linger)."""
    from pipeline.bus import TRANSACTION_LINGER_MS, make_transactional_producer
    from pipeline.producers import _send_now

    producer = make_transactional_producer(KAFKA, "stage.0")
    try:
        assert producer._message_accumulator._linger_time == TRANSACTION_LINGER_MS / 1000
        assert callable(producer._message_accumulator.flush_for_commit)
        await asyncio.wait_for(_send_now(producer), 1)  # nothing queued: returns at once
    finally:
        await producer.stop()


# ---- records in batches per partition (RenewingProducer.send_keyed) -------------------------------


async def test_records_of_one_key_share_a_partition_in_order_and_full_batches_go_out_on_their_own():
    factory = Factory()
    producer = RenewingProducer(KAFKA, "sessions", make=factory)
    records = [(b"s%d" % (n % 2), b"v%d" % n) for n in range(8)]  # two keys, four records each
    deliveries = await producer.send_keyed("sessions", records)
    await asyncio.gather(*(d for d, _ in deliveries))
    batches = factory.made[0].batches
    assert sum(n for _, n in deliveries) == 8 and all(len(keys) <= 3 for _, keys in batches)  # capacity 3
    for key in (b"s0", b"s1"):
        partitions = {p for p, keys in batches if key in keys}
        assert len(partitions) == 1  # one partition per key ...
    sent = factory.made[0].sent
    assert [v for v in sent if int(v[1:]) % 2 == 0] == [b"v0", b"v2", b"v4", b"v6"]  # ... in order


async def test_a_batch_that_fails_spends_the_producer():
    factory = Factory(["fail"])
    producer = RenewingProducer(KAFKA, "sessions", make=factory)
    deliveries = await producer.send_keyed("sessions", [(b"k", b"v")])
    with pytest.raises(LeaderNotAvailableError):
        await deliveries[0][0]
    await asyncio.sleep(0)
    await producer.send_keyed("sessions", [(b"k", b"w")])
    assert len(factory.made) == 2 and factory.made[1].sent == [b"w"]


# ---- a transaction's records in batches per partition (TransactionalProducer.send_keyed) -----------


async def test_a_transactions_keyed_records_go_in_batches_per_partition_and_commit_with_it():
    factory = Factory()
    tx = TransactionalProducer(KAFKA, "ingress.0", make=factory)
    records = [(b"m%d" % n, b"v%d" % n) for n in range(5)]
    async with tx.transaction() as producer:
        await producer.send_keyed("received", records)
    made = factory.made[0]
    assert made.committed and sorted(made.sent) == sorted(v for _, v in records)
    assert sorted(k for _, keys in made.batches for k in keys) == sorted(k for k, _ in records)
    assert all(len(keys) <= 3 for _, keys in made.batches)  # a full batch went out on its own


async def test_a_transaction_whose_keyed_batch_fails_is_not_committed():
    factory = Factory(["ok", "fail"])
    tx = TransactionalProducer(KAFKA, "ingress.0", make=factory)
    with pytest.raises(LeaderNotAvailableError):
        async with tx.transaction() as producer:
            await producer.send_keyed("received", [(b"a", b"1"), (b"a", b"2")])  # one batch, its 2nd record fails
    assert not factory.made[0].committed and factory.made[0]._closed
