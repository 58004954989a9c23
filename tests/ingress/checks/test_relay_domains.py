"""relay_domains of the relay check: a department's sub-domain is relayed for anyone, nothing else is."""
from __future__ import annotations

from ingress.checks import PASS, CheckContext, CheckServices
from ingress.checks.relay import RELAY_DENIED, RelayCheck, RelaySettings


def _context() -> CheckContext:
    return CheckContext(session_id="t1", client_ip="192.0.2.10", sender="someone@example.org")


async def test_relay_domains_and_their_sub_domains_pass_others_are_refused() -> None:
    check = RelayCheck(RelaySettings(relay_domains=["physik.school.test", ".physik.school.test", "Lists.School.Test"]),
                       CheckServices(local_domains=frozenset({"school.test"})))
    ctx = _context()
    for passes in ("prof@physik.school.test", "x@labor.physik.school.test", "liste@lists.school.test",
                   "anna@school.test"):
        assert await check.rcpt(ctx, passes) == PASS, passes
    assert ctx.notes["relay"] == "relay_domain"
    for refused in ("x@chemie.school.test", "x@notphysik.school.test", "x@sub.lists.school.test", "x@ext.test",
                    "x@physik.school.test.evil.test"):
        assert (await check.rcpt(_context(), refused)).reply == RELAY_DENIED, refused
