"""The consumers' and transactional producers' settings that the broker's request count depends on
(`pipeline.bus`): checked on the clients aiokafka builds, without a broker."""
from __future__ import annotations

from pipeline.bus import IDLE_FETCH_WAIT_MS, TRANSACTION_BATCH_BYTES, make_consumer, make_transactional_producer
from pipeline.settings import KafkaSettings


async def test_an_idle_fetch_is_held_at_the_broker_for_idle_fetch_wait_ms():
    consumer = make_consumer(KafkaSettings(), "g", "test")
    assert consumer._fetch_max_wait_ms == IDLE_FETCH_WAIT_MS == 2000


async def test_the_idle_fetch_wait_stays_under_the_request_timeout():
    consumer = make_consumer(KafkaSettings(request_timeout_ms=1000), "g", "test")
    assert consumer._fetch_max_wait_ms == 500


async def test_a_hop_that_gathers_keeps_its_own_fetch_wait():
    consumer = make_consumer(KafkaSettings(), "g", "test", fetch_max_wait_ms=300)
    assert consumer._fetch_max_wait_ms == 300


async def test_a_transactions_records_fit_one_batch_per_partition():
    producer = make_transactional_producer(KafkaSettings(), "t.0")
    assert producer._message_accumulator._batch_size == TRANSACTION_BATCH_BYTES == 256 * 1024
