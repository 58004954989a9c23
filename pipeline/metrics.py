"""The Prometheus metrics of one process, and the HTTP endpoint that serves them.

Every metric lives in `REGISTRY`, this process's own registry (not prometheus_client's global
one), and every component process serves it at ``GET /metrics`` (`serving_metrics`, started by
`poststelle run`; the port comes from ``[metrics]``, see `pipeline.metrics_settings`). The server
runs in the component's own event loop (`pipeline.web`), so a scrape reads the metrics in the same
thread that changes them; no thread is started.

The metrics shared by every hop, sink and the ingress are defined here; a stage's own metrics
(the virus stage's scans, the expand stage's limits) are defined in its module, on the same
registry (`counter`, `gauge`). Names start with ``poststelle_``; counters are exposed with
``_total`` (prometheus_client adds it). Hops and sinks use `HopMetrics` (a few calls each), so
their code carries hooks, not metric definitions.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily

from pipeline.metrics_settings import MetricsSettings

__all__ = ["REGISTRY", "HopMetrics", "counter", "gauge", "read_at_scrape", "serving_metrics", "exposition", "sample",
           "metric_names", "VERDICTS", "DELIVERIES", "SMTP_SESSIONS", "SMTP_SESSIONS_ACTIVE", "SMTP_REPLIES",
           "LDAP_UP", "DNS_UP", "CONSUMER_LAG"]

log = logging.getLogger(__name__)

prometheus_client.disable_created_metrics()  # no `_created` series next to every counter
REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)  # process_cpu_seconds_total, process_resident_memory_bytes, ...

# seconds; a stage's record takes from well under a millisecond (route) to seconds (a large scan)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def counter(name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
    """A counter on this process's registry (``name`` without ``_total``)."""
    return Counter(name, documentation, list(labels), registry=REGISTRY)


def gauge(name: str, documentation: str, labels: Sequence[str] = ()) -> Gauge:
    return Gauge(name, documentation, list(labels), registry=REGISTRY)


@contextlib.contextmanager
def read_at_scrape(name: str, documentation: str, labels: Sequence[str],
                   read: Callable[[], dict[tuple[str, ...], float]]) -> Iterator[None]:
    """While the block runs, the gauge `name` is `read()` (label values → value) at each scrape: for
    a size that is cheap to count but would be a chore to keep up to date (the quarantine's entries).
    A scrape runs in the component's event loop, so `read` sees a consistent state."""

    class _Collector:
        def describe(self) -> list[GaugeMetricFamily]:
            return [GaugeMetricFamily(name, documentation, labels=list(labels))]

        def collect(self) -> list[GaugeMetricFamily]:
            family = GaugeMetricFamily(name, documentation, labels=list(labels))
            for values, value in sorted(read().items()):
                family.add_metric(list(values), value)
            return [family]

    collector = _Collector()
    REGISTRY.register(collector)
    try:
        yield
    finally:
        REGISTRY.unregister(collector)


# -- records: hops (stages, retry, bounce, verdict) and sinks -------------------------------------

RECORDS_PROCESSED = counter("poststelle_records_processed", "input records handled (a redone batch counts again)",
                            ["component"])
RECORDS_DEADLETTERED = counter("poststelle_records_deadlettered", "input records dead-lettered, by reason",
                               ["component", "reason"])
RECORDS_RETRIED = counter("poststelle_records_retried",
                          "input records put back to be tried later (held, temporary failure, timeout)", ["component"])
HANDLE_SECONDS = Histogram("poststelle_handle_seconds", "seconds one input record took to handle",
                           ["component"], buckets=LATENCY_BUCKETS, registry=REGISTRY)
CONSUMER_LAG = gauge("poststelle_consumer_lag",
                     "records of a partition not yet consumed by the group (end offset minus position)",
                     ["group", "topic", "partition"])
VERDICTS = counter("poststelle_verdicts", "stage results, by stage and verdict", ["stage", "verdict"])
DELIVERIES = counter("poststelle_deliveries", "delivery attempts' results per recipient", ["destination", "result"])

# -- the ingress -------------------------------------------------------------------------------------

SMTP_SESSIONS = counter("poststelle_smtp_sessions", "SMTP connections accepted")
SMTP_SESSIONS_ACTIVE = gauge("poststelle_smtp_sessions_active", "SMTP connections open now")
SMTP_REPLIES = counter("poststelle_smtp_replies", "SMTP replies sent, by code (multi-line replies once)", ["code"])

# -- the blob store -------------------------------------------------------------------------------

BLOBS_DELETED = counter("poststelle_blobs_deleted", "blobs the cleanup deleted: of expired quarantine entries "
                        "(quarantine), past [blobs] retention (retention), a dead writer's leftovers (leftover)",
                        ["reason"])

# -- outside services -------------------------------------------------------------------------------

LDAP_UP = gauge("poststelle_ldap_up", "1 while the directory answers, 0 after it failed to", ["server"])
DNS_UP = gauge("poststelle_dns_up", "1 while the name server answers, 0 after it did not")


class HopMetrics:
    """The metrics of one consumer: a hop or a sink. `component` labels them (``stage:virus``)."""

    def __init__(self, component: str, group: str, lag_interval: float = 5.0) -> None:
        self.component = component
        self.group = group
        self.lag_interval = lag_interval
        self._processed = RECORDS_PROCESSED.labels(component)
        self._retried = RECORDS_RETRIED.labels(component)
        self._latency = HANDLE_SECONDS.labels(component)
        self._verdicts: dict[tuple[str, str], Counter] = {}
        self._lag_labels: set[tuple[str, str]] = set()

    def handling(self) -> _Handling:
        """Around the handling of one record (``with``): its duration, and processed or (on an
        exception) retried. A fresh object per record: records may be handled concurrently."""
        return _Handling(self)

    def verdict(self, stage: str, verdict: str) -> None:
        child = self._verdicts.get((stage, verdict))
        if child is None:  # the label lookup costs more than the increment: once per pair
            child = self._verdicts[(stage, verdict)] = VERDICTS.labels(stage, verdict)
        child.inc()

    def processed(self, records: int = 1) -> None:
        self._processed.inc(records)

    def deadlettered(self, reason: str) -> None:
        RECORDS_DEADLETTERED.labels(self.component, reason).inc()

    # -- consumer lag ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lag_of(self, consumer: Callable[[], object | None]) -> AsyncIterator[None]:
        """While the block runs, read the lag of `consumer()` (an AIOKafkaConsumer, None before it
        exists) every `lag_interval` seconds into `CONSUMER_LAG`."""
        task = asyncio.create_task(self._follow_lag(consumer), name=f"{self.component}-lag")
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            self._forget_lag(set())

    async def _follow_lag(self, consumer: Callable[[], object | None]) -> None:
        while True:
            current = consumer()
            if current is not None:
                try:
                    await self.read_lag(current)
                except Exception as exc:  # a rebalance or an outage in between: the next reading will do
                    log.debug("%s: no lag reading: %s", self.component, exc)
            await asyncio.sleep(self.lag_interval)

    async def read_lag(self, consumer) -> None:
        """One reading: per assigned partition, the end offset the consumer knows (the last stable
        offset for a read_committed consumer) minus its position. Partitions it lost are dropped."""
        seen: set[tuple[str, str]] = set()
        for tp in consumer.assignment():
            end = consumer.last_stable_offset(tp)
            if end is None:
                end = consumer.highwater(tp)
            if end is None:  # nothing fetched from it yet
                continue
            async with asyncio.timeout(1.0):
                position = await consumer.position(tp)
            labels = (tp.topic, str(tp.partition))
            CONSUMER_LAG.labels(self.group, *labels).set(max(0, end - position))
            seen.add(labels)
        self._forget_lag(seen)

    def _forget_lag(self, keep: set[tuple[str, str]]) -> None:
        for labels in self._lag_labels - keep:
            with contextlib.suppress(KeyError):
                CONSUMER_LAG.remove(self.group, *labels)
        self._lag_labels = keep


class _Handling:
    """`HopMetrics.handling`: a class, not a generator, since it runs for every record."""

    __slots__ = ("metrics", "started")

    def __init__(self, metrics: HopMetrics) -> None:
        self.metrics = metrics
        self.started = 0.0

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> None:
        m = self.metrics
        m._latency.observe(time.perf_counter() - self.started)
        if kind is None:
            m._processed.inc()
        elif issubclass(kind, Exception):  # not a cancellation: the record is tried again later
            m._retried.inc()


# -- serving ------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serving_metrics(settings: MetricsSettings, port: int, name: str) -> AsyncIterator[int | None]:
    """Serve `REGISTRY` at ``http://<host>:<port>/metrics`` while the block runs; yields the bound
    port, or None when metrics are off or the port cannot be bound (logged: a component without its
    metrics still does its work, it does not crash-loop on a port conflict)."""
    if not settings.enabled:
        yield None
        return
    from pipeline.web import serving

    try:
        server = serving(prometheus_client.make_asgi_app(registry=REGISTRY), settings.host, port,
                         name=f"{name}-metrics", max_connections=16)
        bound = await server.__aenter__()
    except OSError as exc:
        log.error("%s: cannot serve metrics on %s:%d: %s", name, settings.host, port, exc)
        yield None
        return
    try:
        yield bound
    finally:
        await server.__aexit__(None, None, None)


def exposition() -> str:
    """What ``/metrics`` answers now (the text format)."""
    return prometheus_client.generate_latest(REGISTRY).decode()


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    """The value of one sample (``poststelle_records_processed_total``, with its labels); 0 if absent."""
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def metric_names() -> set[str]:
    """Every sample name the registry can expose (with ``_total``, ``_bucket``, ... suffixes)."""
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}
        names.update(family.name + s for s in suffixes.get(family.type, ()))
    return names
