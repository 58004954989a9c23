"""Waiting for the broker (pipeline/broker.py), without a broker: backoff, log once, state file, stop."""
from __future__ import annotations

import asyncio
import logging
import os

import orjson
import pytest
from aiokafka.errors import KafkaConnectionError

from pipeline.broker import BrokerWatch, ClientLogRepeats, Stopping


class Broker:
    """A stand-in for the broker: down for the first `failures` calls, then up; notes when it was called."""

    def __init__(self, failures: int, clock: "Clock") -> None:
        self.failures, self.clock = failures, clock
        self.calls: list[float] = []

    async def call(self) -> str:
        self.calls.append(self.clock.now)
        if len(self.calls) <= self.failures:
            raise KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 9)]")
        return "answer"


class Clock:
    """Virtual time: `sleep` advances it instead of waiting."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _watch(clock: Clock, **kwargs) -> BrokerWatch:
    return BrokerWatch("127.0.0.1:9", backoff_initial=0.5, backoff_max=4.0, patience=None, clock=clock,
                       sleep=clock.sleep, **kwargs)


async def test_retry_waits_with_a_doubling_backoff_up_to_the_cap(clock):
    broker = Broker(failures=6, clock=clock)
    assert await _watch(clock).retry("stage", broker.call) == "answer"
    pauses = [b - a for a, b in zip(broker.calls, broker.calls[1:])]
    assert pauses == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


async def test_an_outage_is_logged_once_when_it_starts_and_once_when_it_ends(clock, caplog):
    watch = _watch(clock)
    first, second = Broker(failures=5, clock=clock), Broker(failures=3, clock=clock)
    with caplog.at_level(logging.INFO, logger="pipeline.broker"):
        await asyncio.gather(watch.retry("consumer", first.call), watch.retry("ledger", second.call))
    lines = [r.getMessage() for r in caplog.records if r.name == "pipeline.broker"]
    assert len(lines) == 2, lines
    assert lines[0].startswith("waiting for kafka at 127.0.0.1:9: KafkaConnectionError: Unable to bootstrap")
    assert lines[1].startswith("kafka is back after ")
    assert watch.outages == 1 and not watch.waiting


async def test_a_second_outage_is_reported_again(clock, caplog):
    watch = _watch(clock)
    with caplog.at_level(logging.INFO, logger="pipeline.broker"):
        await watch.retry("consumer", Broker(failures=1, clock=clock).call)
        await watch.retry("consumer", Broker(failures=2, clock=clock).call)
    waiting = [r for r in caplog.records if r.getMessage().startswith("waiting for kafka")]
    assert len(waiting) == 2 and watch.outages == 2


async def test_the_state_file_says_waiting_for_kafka_while_waiting_and_is_gone_after(clock, tmp_path):
    state = tmp_path / "run" / "stage-route.state"
    watch = _watch(clock, state_file=state)
    seen: list[dict] = []

    async def attempt() -> None:
        if state.exists():
            seen.append(orjson.loads(state.read_bytes()))
        if len(seen) < 2:
            raise KafkaConnectionError("down")

    await watch.retry("stage:route", attempt)
    assert seen[0]["waiting_for"] == "kafka" and seen[0]["pid"] == os.getpid()
    assert "KafkaConnectionError" in seen[0]["reasons"]["stage:route"]
    assert not state.exists()


async def test_aiokafka_logs_are_held_back_while_waiting_and_restored_after(clock):
    client_logger = logging.getLogger("aiokafka")
    client_logger.setLevel(logging.WARNING)
    watch = _watch(clock)
    levels: list[int] = []

    async def attempt() -> None:
        levels.append(client_logger.level)
        if len(levels) < 3:
            raise KafkaConnectionError("down")

    await watch.retry("consumer", attempt)
    assert levels == [logging.WARNING, logging.CRITICAL, logging.CRITICAL]
    assert client_logger.level == logging.WARNING


async def test_a_stop_ends_the_waiting_with_stopping():
    stop = asyncio.Event()
    watch = BrokerWatch("127.0.0.1:9", backoff_initial=0.01, backoff_max=0.02, stop=stop, patience=None)
    calls = 0

    async def down() -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            stop.set()
        raise KafkaConnectionError("down")

    with pytest.raises(Stopping):
        await asyncio.wait_for(watch.retry("consumer", down), 5)
    assert calls == 3


async def test_the_first_try_is_made_even_when_stopping():
    """A batch drained at SIGTERM still commits: only the pauses end the waiting."""
    stop = asyncio.Event()
    stop.set()
    watch = BrokerWatch("127.0.0.1:9", stop=stop, patience=None)

    async def up() -> str:
        return "committed"

    assert await watch.retry("consumer", up) == "committed"


async def test_an_unconfigured_watch_gives_up_after_its_patience(clock):
    """A command such as `poststelle queue` reports the broker error instead of waiting for ever."""
    watch = BrokerWatch("127.0.0.1:9", backoff_initial=1.0, backoff_max=4.0, patience=10.0, clock=clock,
                        sleep=clock.sleep)
    broker = Broker(failures=100, clock=clock)
    with pytest.raises(KafkaConnectionError):
        await watch.retry("queue", broker.call)
    assert clock.now >= 10.0 and not watch.waiting


async def test_errors_that_are_not_the_brokers_are_not_waited_for(clock):
    async def bug() -> None:
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        await _watch(clock).retry("consumer", bug)


async def test_the_monitor_reports_an_idle_process_waiting_and_back(clock, tmp_path):
    state = tmp_path / "ingress.state"
    watch = _watch(clock, state_file=state)
    answers = iter([True, False, False, True])
    states: list[bool] = []

    async def probe() -> None:
        states.append(state.exists())
        if not next(answers, True):
            raise KafkaConnectionError("Unable to bootstrap")

    monitor = asyncio.create_task(watch.monitor(probe))
    while len(states) < 5:
        await asyncio.sleep(0)
    monitor.cancel()
    await asyncio.gather(monitor, return_exceptions=True)
    # probed while: up, up (fails now), waiting, waiting (answers now), up again
    assert states == [False, False, True, True, False]


def test_client_log_repeats_are_let_through_once_per_window(clock):
    repeats = ClientLogRepeats(window=60.0, clock=clock)

    def passes(name: str, message: str) -> bool:
        return repeats.filter(logging.LogRecord(name, logging.ERROR, __file__, 1, message, (), None))

    line = "Unable connect to node with id 1: [Errno 111] Connect call failed"
    assert passes("aiokafka", line)
    assert not passes("aiokafka", line)
    assert passes("aiokafka.consumer.fetcher", "Failed fetch messages from 1")
    assert passes("pipeline.hop", "ours are never held back") and passes("pipeline.hop", "ours are never held back")
    clock.now += 61
    assert passes("aiokafka", line)


async def test_a_long_outage_is_recalled_once_a_minute(clock, caplog):
    broker = Broker(failures=200, clock=clock)  # 4 s pauses: about 800 s of waiting
    with caplog.at_level(logging.INFO, logger="pipeline.broker"):
        await _watch(clock).retry("consumer", broker.call)
    lines = [r.getMessage() for r in caplog.records if r.name == "pipeline.broker"]
    still = [line for line in lines if line.startswith("still waiting for kafka")]
    assert lines[0].startswith("waiting for kafka") and lines[-1].startswith("kafka is back")
    assert len(still) == int(clock.now // 60) and still[0].startswith("still waiting for kafka at 127.0.0.1:9 after 64s")
