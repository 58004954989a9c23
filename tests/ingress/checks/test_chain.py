"""The check chain: each phase runs the checks that look at it, in order, each within the timeout."""

import asyncio

from ingress.checks import PASS, Check, CheckChain, CheckContext, CheckServices, Networks, refuse

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


class Sleeps(Check):
    """A check whose rcpt hook takes `seconds`."""

    def __init__(self, name: str, seconds: float, services: CheckServices) -> None:
        super().__init__(None, services)
        self.name, self.seconds = name, seconds

    async def rcpt(self, ctx, recipient):
        await asyncio.sleep(self.seconds)
        return PASS


class OwnTimeout(Check):
    name = "own_timeout"

    async def rcpt(self, ctx, recipient):
        raise TimeoutError("the check's own client gave up")


async def test_each_check_has_the_whole_timeout_even_when_earlier_ones_used_most_of_it():
    services = CheckServices()
    chain = CheckChain([Sleeps("first", 0.3, services), Sleeps("second", 0.3, services)], timeout=0.4)
    outcome = await chain.run("rcpt", CheckContext(session_id="s", client_ip="192.0.2.1"), "a@school.test")
    assert outcome.decision is PASS  # 0.6 s in all, each under its 0.4


async def test_the_check_that_runs_over_is_the_one_named():
    services = CheckServices()
    chain = CheckChain([Sleeps("quick", 0.0, services), Sleeps("stuck", 5, services)], timeout=0.1)
    outcome = await chain.run("rcpt", CheckContext(session_id="s", client_ip="192.0.2.1"), "a@school.test")
    assert outcome.check == "stuck" and outcome.decision.reason_code == "stuck_timeout"


async def test_a_check_that_raises_its_own_timeout_is_a_timeout_and_the_phase_ends_there():
    services = CheckServices()
    chain = CheckChain([OwnTimeout(None, services), Sleeps("after", 0.0, services)], timeout=1.0)
    outcome = await chain.run("rcpt", CheckContext(session_id="s", client_ip="192.0.2.1"), "a@school.test")
    assert outcome.check == "own_timeout" and outcome.decision.reason_code == "own_timeout_timeout"


def test_networks_answer_membership_for_both_families_and_remember_the_answers():
    networks = Networks(["127.0.0.0/8", " 2001:db8::/32 ", ""])
    assert "127.1.2.3" in networks and "2001:db8::1" in networks
    assert "192.0.2.1" not in networks and "2001:db9::1" not in networks and "not an address" not in networks
    assert "127.1.2.3" in networks and "192.0.2.1" not in networks  # the remembered answers are the same
    networks.MEMO_SIZE = 2
    for n in range(5):  # a full memory starts over: bounded however many addresses come
        assert f"10.0.0.{n}" not in networks
    assert len(networks._memo) <= 2 and "127.0.0.1" in networks
    assert not Networks([]) and "127.0.0.1" not in Networks([])
