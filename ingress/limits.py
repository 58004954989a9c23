"""Per-client limits of the ingress: concurrent connections and failed AUTH attempts.

Both are counted in the process (each ingress instance counts its own connections, like Postfix's
anvil per host). Neither needs to survive a restart.
"""
from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable

__all__ = ["ConnectionLimits", "AuthFailures", "TOO_MANY_CONNECTIONS", "TOO_MANY_FROM_CLIENT",
           "TOO_MANY_AUTH_FAILURES"]

TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections, try again later"
TOO_MANY_FROM_CLIENT = "421 4.7.0 Too many connections from your address, try again later"
TOO_MANY_AUTH_FAILURES = "454 4.7.0 Too many failed authentication attempts, try again later"


class ConnectionLimits:
    """Concurrent sessions in total and per client IP; `acquire` says whether one more may start."""

    def __init__(self, total: int, per_ip: int) -> None:
        self.total_limit = total
        self.per_ip_limit = per_ip
        self.by_ip: Counter[str] = Counter()
        self.total = 0

    def acquire(self, ip: str) -> str | None:
        """Count a new session; returns the refusal when a limit is reached (then nothing is counted)."""
        if self.total >= self.total_limit:
            return TOO_MANY_CONNECTIONS
        if self.by_ip[ip] >= self.per_ip_limit:
            return TOO_MANY_FROM_CLIENT
        self.total += 1
        self.by_ip[ip] += 1
        return None

    def release(self, ip: str) -> None:
        if self.by_ip[ip] <= 0:
            return
        self.total -= 1
        self.by_ip[ip] -= 1
        if self.by_ip[ip] == 0:
            del self.by_ip[ip]


class AuthFailures:
    """Failed AUTH attempts per client IP in a sliding window: over the limit, AUTH is refused."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self.failures: dict[str, deque[float]] = {}

    def _recent(self, ip: str) -> deque[float]:
        times = self.failures.get(ip)
        if times is None:
            return deque()
        horizon = self.clock() - self.window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self.failures[ip]
        return times

    def blocked(self, ip: str) -> bool:
        return len(self._recent(ip)) >= self.limit

    def record(self, ip: str) -> None:
        self._recent(ip)
        self.failures.setdefault(ip, deque()).append(self.clock())
