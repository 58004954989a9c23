"""Per-client limits of the ingress: concurrent connections, stress, and the replies of the limits.

Counted in the process (each ingress instance counts its own connections, like Postfix's anvil per
host); nothing needs to survive a restart. Failed AUTH attempts per client are counted by
`pipeline.failures.FailureWindow` (the portal's sign-in uses the same).
"""
from __future__ import annotations

from collections import Counter

from pipeline.settings import IngressSettings

__all__ = ["ConnectionLimits", "TOO_MANY_CONNECTIONS", "TOO_MANY_FROM_CLIENT",
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

    def acquire(self, ip: str, *, exempt: bool = False) -> str | None:
        """Count a new session; returns the refusal when a limit is reached (then nothing is counted).

        `exempt` clients (the site's own: allowlisted or relay networks) are not held to the per-IP
        limit, as Postfix exempts $mynetworks (smtpd_client_event_limit_exceptions); the total
        limit, which protects the process, holds for everyone.
        """
        if self.total >= self.total_limit:
            return TOO_MANY_CONNECTIONS
        if not exempt and self.by_ip[ip] >= self.per_ip_limit:
            return TOO_MANY_FROM_CLIENT
        self.total += 1
        self.by_ip[ip] += 1
        return None

    def under_stress(self, threshold: float) -> bool:
        """True while the sessions in use reach `threshold` (a fraction) of the total limit."""
        return self.total >= threshold * self.total_limit

    def idle_timeout(self, settings: IngressSettings) -> float:
        """Seconds a session may idle before its next command: `data_timeout`, or `stress_timeout`
        while under stress (Postfix's smtpd_timeout ${stress?10}:300), so idle sessions (a botnet's)
        give their slots back; a real MTA sends its next command at once and does not notice."""
        if settings.stress_timeout > 0 and self.under_stress(settings.stress_threshold):
            return min(settings.stress_timeout, settings.data_timeout)
        return settings.data_timeout

    def release(self, ip: str) -> None:
        if self.by_ip[ip] <= 0:
            return
        self.total -= 1
        self.by_ip[ip] -= 1
        if self.by_ip[ip] == 0:
            del self.by_ip[ip]
