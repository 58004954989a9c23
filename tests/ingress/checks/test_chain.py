"""The check chain: each phase runs the checks that look at it, in order, each within the timeout."""

import asyncio

from ingress.checks import PASS, Check, CheckChain, CheckContext, CheckServices, refuse

CALLS: list[str] = []


class RcptOnly(Check):
    name = "rcpt_only"

    async def rcpt(self, ctx, recipient):
        CALLS.append(f"{self.name}:rcpt")
        return PASS


class InheritsRcpt(RcptOnly):  # overrides nothing itself: its parent's rcpt is still a check
    name = "inherits_rcpt"


class Slow(Check):
    name = "slow"

    async def connect(self, ctx):
        CALLS.append("slow:connect")
        await asyncio.sleep(1)
        return PASS

    async def mail(self, ctx, sender):
        CALLS.append("slow:mail")
        return refuse("550 5.7.1 No", "no")


def _chain() -> CheckChain:
    services = CheckServices()
    return CheckChain([RcptOnly(None, services), InheritsRcpt(None, services), Slow(None, services)], timeout=0.05)


async def test_each_phase_calls_only_the_checks_that_override_it():
    CALLS.clear()
    chain, ctx = _chain(), CheckContext(session_id="s", client_ip="192.0.2.1")
    assert (await chain.run("helo", ctx, "client.test")).decision is PASS
    assert (await chain.run("rcpt", ctx, "a@school.test")).decision is PASS
    refused = await chain.run("mail", ctx, "b@ext.test")
    assert refused.check == "slow" and refused.decision.refused
    assert CALLS == ["rcpt_only:rcpt", "inherits_rcpt:rcpt", "slow:mail"]


async def test_a_check_over_the_timeout_is_a_temporary_failure():
    chain, ctx = _chain(), CheckContext(session_id="s", client_ip="192.0.2.1")
    outcome = await chain.run("connect", ctx)
    assert outcome.check == "slow" and outcome.decision.reply.startswith("451 4.3.0")
