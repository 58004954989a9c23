"""The process's Prometheus metrics: the hop hooks, the lag reading, the HTTP endpoint, the ports."""
from __future__ import annotations

import asyncio
import logging
import socket

import httpx
import pytest
from aiokafka import TopicPartition

from pipeline.cli.components import components, load_config, metrics_endpoints, metrics_port
from pipeline.metrics import (
    CONSUMER_LAG,
    HopMetrics,
    exposition,
    metric_names,
    read_at_scrape,
    sample,
    serving_metrics,
)
from pipeline.metrics_settings import MetricsSettings
from pipeline.settings import ConfigError


def _processed(component: str) -> float:
    return sample("poststelle_records_processed_total", {"component": component})


def test_handling_counts_processed_or_retried_and_times_it():
    metrics = HopMetrics("stage:unit-a", "poststelle.unit-a")
    before = sample("poststelle_handle_seconds_count", {"component": "stage:unit-a"})
    with metrics.handling():
        pass
    with pytest.raises(TimeoutError), metrics.handling():
        raise TimeoutError
    metrics.deadlettered("undecodable")
    assert _processed("stage:unit-a") == 1
    assert sample("poststelle_records_retried_total", {"component": "stage:unit-a"}) == 1
    assert sample("poststelle_records_deadlettered_total", {"component": "stage:unit-a", "reason": "undecodable"}) == 1
    assert sample("poststelle_handle_seconds_count", {"component": "stage:unit-a"}) == before + 2
    metrics.verdict("unit-a", "pass")
    metrics.verdict("unit-a", "pass")
    assert sample("poststelle_verdicts_total", {"stage": "unit-a", "verdict": "pass"}) == 2
    with pytest.raises(asyncio.CancelledError), metrics.handling():
        raise asyncio.CancelledError  # a stopping hop: the record is neither handled nor retried
    assert (_processed("stage:unit-a"), sample("poststelle_records_retried_total", {"component": "stage:unit-a"})) == (1, 1)


class _Consumer:
    """A stand-in for aiokafka's consumer: what the lag reading asks of it."""

    def __init__(self, ends: dict[TopicPartition, int | None], positions: dict[TopicPartition, int],
                 lso: bool = True) -> None:
        self.ends, self.positions, self.lso = ends, positions, lso

    def assignment(self) -> set[TopicPartition]:
        return set(self.positions)

    def last_stable_offset(self, tp: TopicPartition) -> int | None:
        return self.ends[tp] if self.lso else None

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.ends[tp]

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]


def _lag(group: str, partition: int) -> float | None:
    from pipeline.metrics import REGISTRY

    return REGISTRY.get_sample_value("poststelle_consumer_lag",
                                     {"group": group, "topic": "t", "partition": str(partition)})


async def test_lag_is_end_minus_position_per_partition_and_lost_partitions_are_dropped():
    p0, p1, p2 = (TopicPartition("t", i) for i in range(3))
    metrics = HopMetrics("stage:unit-lag", "poststelle.unit-lag")
    await metrics.read_lag(_Consumer({p0: 10, p1: 7, p2: None}, {p0: 4, p1: 7, p2: 0}))
    assert (_lag("poststelle.unit-lag", 0), _lag("poststelle.unit-lag", 1)) == (6, 0)
    assert _lag("poststelle.unit-lag", 2) is None  # nothing fetched yet: no figure rather than a wrong one
    await metrics.read_lag(_Consumer({p1: 9}, {p1: 8}, lso=False))  # p0 went to another member
    assert (_lag("poststelle.unit-lag", 0), _lag("poststelle.unit-lag", 1)) == (None, 1)


async def test_lag_of_reads_in_the_background_and_forgets_at_the_end():
    tp = TopicPartition("t", 5)
    metrics = HopMetrics("stage:unit-bg", "poststelle.unit-bg", lag_interval=0.01)
    consumer = _Consumer({tp: 3}, {tp: 1})
    async with metrics.lag_of(lambda: consumer):
        for _ in range(100):
            if _lag("poststelle.unit-bg", 5) == 2:
                break
            await asyncio.sleep(0.01)
        assert _lag("poststelle.unit-bg", 5) == 2
    assert _lag("poststelle.unit-bg", 5) is None
    assert CONSUMER_LAG.describe()  # the family stays defined


async def test_the_endpoint_serves_the_registry_over_http():
    metrics = HopMetrics("stage:unit-http", "g")
    with metrics.handling():
        pass
    async with serving_metrics(MetricsSettings(), 0, "unit") as port:
        assert port
        async with httpx.AsyncClient() as client:
            reply = await client.get(f"http://127.0.0.1:{port}/metrics")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    assert 'poststelle_records_processed_total{component="stage:unit-http"} 1.0' in reply.text
    assert "process_cpu_seconds_total" in reply.text
    assert 'poststelle_records_processed_total{component="stage:unit-http"} 1.0' in exposition()


async def test_a_port_in_use_or_metrics_off_serve_nothing_and_do_not_fail(caplog):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.ERROR, logger="pipeline.metrics"):
            async with serving_metrics(MetricsSettings(), port, "unit") as bound:
                assert bound is None
        assert f"cannot serve metrics on 127.0.0.1:{port}" in caplog.text
    async with serving_metrics(MetricsSettings(enabled=False), 0, "unit") as bound:
        assert bound is None


def test_every_metric_family_is_named_poststelle_or_process():
    names = metric_names()
    assert {"poststelle_records_processed_total", "poststelle_handle_seconds_bucket", "poststelle_consumer_lag",
            "poststelle_smtp_replies_total", "poststelle_verdicts_total"} <= names
    assert all(n.startswith(("poststelle_", "process_")) for n in names)


def test_each_component_has_its_own_stable_port():
    settings = load_config("deploy/local/poststelle.toml", environ={})
    ports = {c.name: metrics_port(settings, c.name) for c in components(settings)}
    assert len(set(ports.values())) == len(ports)  # no two share one
    assert ports["ingress"] == 9400 and ports["verdict"] == 9401 and ports["sink:analytics"] == 9406
    assert ports["chain:blocklist-route"] == 9407  # the stages (chained) after the fixed components, in topology order
    assert ports["sink:lmtp"] == 9408
    assert metrics_port(settings, "chain:blocklist-route", "2") == 9607  # instance 2: two strides on
    alone = load_config("deploy/local/poststelle.toml", environ={"POSTSTELLE_TOPOLOGY__CHAINS": "[]"})
    assert metrics_port(alone, "stage:blocklist") == 9407 and metrics_port(alone, "stage:route") == 9413
    assert metrics_endpoints(settings)["ingress"] == "http://127.0.0.1:9400/metrics"
    with pytest.raises(ConfigError, match="needs a number"):
        metrics_port(settings, "ingress", "a")
    with pytest.raises(ConfigError, match="must exceed the number of components"):
        MetricsSettings(instance_stride=5).port(5)
    with pytest.raises(ConfigError, match="base_port"):
        MetricsSettings(base_port=0)


def test_a_gauge_read_at_scrape_shows_the_state_of_the_moment_and_goes_with_its_block():
    state = {("held",): 2.0}
    with read_at_scrape("poststelle_unit_entries", "entries", ["status"], lambda: dict(state)):
        assert sample("poststelle_unit_entries", {"status": "held"}) == 2
        state[("released",)] = 1.0
        assert 'poststelle_unit_entries{status="released"} 1.0' in exposition()
    assert "poststelle_unit_entries" not in exposition()
