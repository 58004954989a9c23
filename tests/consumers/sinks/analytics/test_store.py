"""The store on the real engine (chDB): idempotent inserts, read-only ad-hoc SQL, the async wrapper."""
from __future__ import annotations

from pathlib import Path

import pytest

from consumers.sinks.analytics.rows import Origin
from consumers.sinks.analytics.store import AnalyticsStore, AsyncAnalyticsStore, QueryError, store_target
from tests.consumers.sinks.analytics.samples import make_settings, received, row_by_id


def test_the_same_events_twice_count_once(store: AnalyticsStore) -> None:
    events = [received(i) for i in range(50)]
    assert store.insert(events + events[:10]) == 50  # duplicates within the batch
    assert store.insert(events) == 0  # a replay
    fresh = [received(i) for i in range(50, 60)]
    assert store.insert(events[:5] + fresh) == 10  # partly new
    _, rows = store.query("SELECT count(), uniqExact(id) FROM events")  # no FINAL needed
    assert rows == [[60, 60]]


def test_insert_of_nothing_writes_nothing(store: AnalyticsStore) -> None:
    assert store.insert([]) == 0


def test_each_event_needs_its_origin(store: AnalyticsStore) -> None:
    with pytest.raises(ValueError, match="one origin per event"):
        store.insert([received(1), received(2)], [Origin("t", 0, 1)])
    first = received(3)
    assert store.insert([first], [Origin("poststelle.received", 1, 99)]) == 1
    assert row_by_id(store, first.id, "kafka_topic, kafka_partition, kafka_offset") == {
        "kafka_topic": "poststelle.received", "kafka_partition": 1, "kafka_offset": 99
    }


def test_ad_hoc_sql_is_read_only(store: AnalyticsStore) -> None:
    with pytest.raises(QueryError, match="readonly"):
        store.query("DROP TABLE events")
    with pytest.raises(QueryError, match="SET"):
        store.query("SET max_result_rows = 0")
    with pytest.raises(QueryError, match="empty"):
        store.query("  ;")
    assert store.query("SELECT 1 AS one;") == (["one"], [[1]])


def test_ad_hoc_sql_is_row_bounded_and_a_refused_result_does_not_leak_into_the_next(store: AnalyticsStore) -> None:
    with pytest.raises(QueryError, match="TOO_MANY_ROWS"):
        store.query("SELECT number FROM system.numbers LIMIT 100001")
    # with chDB, the rest of the refused stream stayed on the session and came back as this result
    assert store.query("SELECT count() AS n FROM numbers(10)") == (["n"], [[10]])
    assert store.query("SELECT sum(number) AS s FROM numbers(10) SETTINGS max_threads = 1") == (["s"], [[45]])


def test_the_database_name_must_be_a_plain_identifier(home: Path) -> None:
    with pytest.raises(ValueError, match="plain identifier"):
        AnalyticsStore.open(make_settings(home, database="x; DROP TABLE events"))


def test_the_embedded_store_lives_under_home(home: Path) -> None:
    assert store_target(make_settings(home)) == f"chdb://{(home / 'clickhouse').resolve()}"
    assert store_target(make_settings(home, url="http://ch.example.test:8123")) == "http://ch.example.test:8123"


async def test_the_async_store_runs_on_its_worker_thread(home: Path) -> None:
    astore = await AsyncAnalyticsStore.open(make_settings(home))
    try:
        assert astore.store.embedded
        assert await astore.insert([received(i) for i in range(3)]) == 3
        assert await astore.query("SELECT count() AS n, any(currentDatabase()) = '' AS unnamed FROM events") == (
            ["n", "unnamed"], [[3, 0]]
        )
    finally:
        await astore.close()
