"""Counting failures per key in a sliding window: the rate limits of SMTP AUTH and the portal's sign-in.

A key (a client address, a login) with `limit` failures within the last `window` seconds is blocked
until the oldest of them leaves the window. Counted in the process, in memory: an instance counts
its own, and nothing needs to survive a restart. At most `max_keys` keys are kept (the oldest go
first), so a flood of made-up logins cannot grow it without bound.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

__all__ = ["FailureWindow", "MAX_KEYS"]

MAX_KEYS = 100_000


class FailureWindow:
    """Failures per key within a sliding window; `blocked` once a key has `limit` of them."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = MAX_KEYS) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self.max_keys = max_keys
        self.failures: dict[str, deque[float]] = {}

    def _recent(self, key: str) -> deque[float]:
        times = self.failures.get(key)
        if times is None:
            return deque()
        horizon = self.clock() - self.window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self.failures[key]
        return times

    def blocked(self, key: str) -> bool:
        return len(self._recent(key)) >= self.limit

    def retry_after(self, key: str) -> float:
        """Seconds until `key` may try again (0: now)."""
        times = self._recent(key)
        return max(0.0, times[0] + self.window - self.clock()) if len(times) >= self.limit else 0.0

    def record(self, key: str) -> None:
        self._recent(key)
        if key not in self.failures and len(self.failures) >= self.max_keys:
            del self.failures[next(iter(self.failures))]
        self.failures.setdefault(key, deque()).append(self.clock())

    def clear(self, key: str) -> None:
        self.failures.pop(key, None)
