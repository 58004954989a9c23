"""FailureWindow: failures per key in a sliding window (SMTP AUTH, the portal's sign-in)."""
from __future__ import annotations

from pipeline.failures import FailureWindow


def test_a_key_is_blocked_at_the_limit_until_the_oldest_failure_leaves_the_window() -> None:
    now = [100.0]
    failures = FailureWindow(3, 60, clock=lambda: now[0])
    for step in range(3):
        assert not failures.blocked("a")
        failures.record("a")
        now[0] += 10
    assert failures.blocked("a") and not failures.blocked("b")
    assert failures.retry_after("a") == 30  # the first failure (t=100) leaves at t=160; now t=130
    now[0] = 160.0
    assert not failures.blocked("a") and failures.retry_after("a") == 0
    failures.record("a")
    failures.clear("a")
    assert "a" not in failures.failures


def test_the_keys_kept_are_bounded() -> None:
    failures = FailureWindow(1, 60, clock=lambda: 0.0, max_keys=2)
    for key in ("a", "b", "c"):
        failures.record(key)
    assert list(failures.failures) == ["b", "c"]
