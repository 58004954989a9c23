"""Waiting for the broker: how every component rides out a Kafka outage instead of exiting.

A process that exits when Kafka is unreachable is restarted by the supervisor again and again (one
stage was restarted 130 times while the broker restarted), and each restart begins from scratch.
Instead, each process has one `BrokerWatch` (`watch()`), and every part of it that talks to Kafka
(the consume loop, a table follower, the ingress's producers) reports to it:

- `lost(part, error)` when a Kafka call failed or timed out. The first loss logs
  ``waiting for kafka at HOST:PORT: why`` once (and a long outage ``still waiting ...`` once a
  minute) and writes the process's state file
  (``<home>/run/<name>.state``), which `poststelle status` shows as ``waiting for kafka``;
- `back(part)` when that part's Kafka calls succeed again. When the last part is back,
  ``kafka is back after N s`` is logged once and the state file removed.

`retry(part, attempt)` is the waiting itself: it calls `attempt` until it succeeds, pausing between
tries with a growing backoff (`kafka.reconnect_backoff_initial`, doubling up to
`kafka.reconnect_backoff_max`). A pause ends early with `Stopping` when the process is told to stop,
so SIGTERM during an outage still stops a component promptly.

`monitor(probe)` runs for the life of a component: every `probe_every` seconds it asks the broker
for its metadata (`bus.MetadataProbe`), which fails at once while the broker is unreachable. Without
it an idle process would not notice an outage (aiokafka's `getmany` just keeps returning nothing and
reconnects by itself), nor would one whose Kafka call is blocked waiting for the broker.

While the process waits, aiokafka's own logger is held at CRITICAL: its clients log every failed
reconnect, tens of lines a second each, which would bury the one line that matters. Before the
watch notices (within `probe_every`), `ClientLogRepeats` lets each of those lines through once.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import orjson
from aiokafka.errors import KafkaError

__all__ = ["BrokerWatch", "BrokerUnavailable", "Stopping", "BROKER_ERRORS", "watch", "describe", "ClientLogRepeats"]

log = logging.getLogger(__name__)
T = TypeVar("T")
# an unconfigured watch (a command such as `poststelle queue`, not a component) gives up after this
DEFAULT_PATIENCE = 15.0
REMIND_EVERY = 60.0  # seconds between "still waiting" lines during a long outage
CLIENT_LOGGER = "aiokafka"


class BrokerUnavailable(Exception):
    """Kafka did not answer within its bound; what was in flight must be given up and redone."""


class Stopping(BaseException):
    """The process was told to stop while it waited for the broker.

    A BaseException, like `asyncio.CancelledError`: it ends the component, and no `except Exception`
    on the way (a dead-letter handler, a retry loop) may take it for a failure of the work at hand."""


# what a Kafka call raises when the broker is away (aiokafka's errors, our own bounds, a dropped socket)
BROKER_ERRORS: tuple[type[BaseException], ...] = (KafkaError, BrokerUnavailable, TimeoutError, ConnectionError)


def describe(exc: BaseException) -> str:
    """One line for the log: the error's type and its message (aiokafka's are often empty, or
    begin with the type already)."""
    name, text = type(exc).__name__, " ".join(str(exc).split())
    if not text or text == name:
        return name
    return text if text.startswith(f"{name}: ") else f"{name}: {text}"


class BrokerWatch:
    """One process's view of the broker: which of its parts are waiting for it, since when, why."""

    def __init__(self, bootstrap: str = "kafka", *, backoff_initial: float = 0.5, backoff_max: float = 2.0,
                 probe_every: float = 2.0, state_file: Path | None = None, stop: asyncio.Event | None = None,
                 patience: float | None = DEFAULT_PATIENCE, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.bootstrap = bootstrap
        self.patience = patience
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.probe_every = probe_every
        self.state_file = state_file
        self.stop = stop
        self._clock, self._sleep = clock, sleep  # (unit tests pass virtual time)
        self._waiting: dict[str, str] = {}  # part -> why
        self._since = self._reminded = 0.0
        self._client_log_level: int | None = None
        self.outages = 0  # how often the process started waiting (for tests and metrics)

    def configure(self, *, bootstrap: str, backoff_initial: float, backoff_max: float,
                  state_file: Path | None, stop: asyncio.Event | None) -> None:
        """Called once by `poststelle run` before the component starts: a component waits as long as
        it takes (no patience), reports to `state_file`, and stops waiting when `stop` is set."""
        self.bootstrap = bootstrap
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.probe_every = min(self.probe_every, backoff_max)
        self.state_file = state_file
        self.stop = stop
        self.patience = None

    # -- state ----------------------------------------------------------------------------------

    @property
    def waiting(self) -> bool:
        return bool(self._waiting)

    def reasons(self) -> dict[str, str]:
        """Which parts wait, and why."""
        return dict(self._waiting)

    def lost(self, part: str, exc: BaseException) -> None:
        """`part` could not reach the broker; the first loss of an outage is logged and reported."""
        first = not self._waiting
        self._waiting[part] = describe(exc)
        now = self._clock()
        if not first:
            if now - self._reminded >= REMIND_EVERY:  # a long outage: say so now and then, not more
                self._reminded = now
                log.warning("still waiting for kafka at %s after %.0fs: %s (%s)", self.bootstrap, now - self._since,
                            self._waiting[part], part)
            return
        self.outages += 1
        self._since = self._reminded = now
        log.warning("waiting for kafka at %s: %s (%s)", self.bootstrap, self._waiting[part], part)
        self._quiet_client_logs()
        self._write_state()

    def back(self, part: str) -> None:
        """`part` reached the broker again; when no part waits any more, that is logged and reported."""
        if self._waiting.pop(part, None) is None or self._waiting:
            return
        log.info("kafka is back after %.1fs", self._clock() - self._since)
        self._restore_client_logs()
        self._remove_state()

    # -- waiting --------------------------------------------------------------------------------

    async def retry(self, part: str, attempt: Callable[[], Awaitable[T]],
                    errors: tuple[type[BaseException], ...] = BROKER_ERRORS, max_pause: float | None = None) -> T:
        """`attempt()` until it succeeds; between tries `part` is reported waiting and pauses, growing.

        The first try is made even when the process is stopping (a batch being drained at SIGTERM
        still commits); only the pauses end with `Stopping`. `max_pause` caps the pauses lower than
        the configured backoff (unit tests)."""
        cap = self.backoff_max if max_pause is None else min(max_pause, self.backoff_max)
        delay = min(self.backoff_initial, cap)
        started = self._clock()
        while True:
            try:
                result = await attempt()
            except errors as exc:
                if self.patience is not None and self._clock() - started >= self.patience:
                    self.back(part)
                    raise
                self.lost(part, exc)
                await self.pause(delay)
                delay = min(delay * 2, cap)
                continue
            self.back(part)
            return result

    async def pause(self, seconds: float) -> None:
        """Sleep `seconds`, or raise `Stopping` as soon as the process is told to stop."""
        if self.stop is None:
            await self._sleep(seconds)
            return
        try:
            await asyncio.wait_for(self.stop.wait(), seconds)
        except TimeoutError:
            return
        raise Stopping()

    async def monitor(self, probe: Callable[[], Awaitable[object]]) -> None:
        """Call `probe` every `probe_every` seconds until cancelled; its failures and successes are
        reported as the part "broker"."""
        while True:
            try:
                await probe()
            except BROKER_ERRORS as exc:
                self.lost("broker", exc)
            else:
                self.back("broker")
            await self._sleep(self.probe_every)

    # -- reporting ------------------------------------------------------------------------------

    def _write_state(self) -> None:
        if self.state_file is None:
            return
        state = {"pid": os.getpid(), "waiting_for": "kafka", "since": time.time(), "reasons": self._waiting}
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.state_file.with_suffix(".tmp")
            tmp.write_bytes(orjson.dumps(state))
            os.replace(tmp, self.state_file)
        except OSError as exc:  # the status display is not worth failing over
            log.debug("state file %s: %s", self.state_file, exc)

    def _remove_state(self) -> None:
        if self.state_file is not None:
            self.state_file.unlink(missing_ok=True)

    def _quiet_client_logs(self) -> None:
        logger = logging.getLogger(CLIENT_LOGGER)
        if self._client_log_level is None:
            self._client_log_level = logger.level
            logger.setLevel(logging.CRITICAL)

    def _restore_client_logs(self) -> None:
        if self._client_log_level is not None:
            logging.getLogger(CLIENT_LOGGER).setLevel(self._client_log_level)
            self._client_log_level = None


class ClientLogRepeats(logging.Filter):
    """A handler filter: each distinct aiokafka message at most once per `window` seconds.

    aiokafka logs a failed reconnect, metadata update or fetch every 100 ms per client; the
    messages repeat word for word."""

    def __init__(self, window: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window, self._clock = window, clock
        self._last: dict[tuple[str, int, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(CLIENT_LOGGER):
            return True
        key, now = (record.name, record.levelno, record.getMessage()), self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.window:
            return False
        if len(self._last) > 1000:  # messages carry ids and offsets too: forget the old ones
            self._last = {k: t for k, t in self._last.items() if now - t < self.window}
        self._last[key] = now
        return True


_watch = BrokerWatch()


def watch() -> BrokerWatch:
    """This process's watch (configured by `poststelle run`; unconfigured it only logs)."""
    return _watch
