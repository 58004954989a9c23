"""The recipient check against the real slapd with the demo school."""
from __future__ import annotations

import socket
import tomllib

import pytest

from ingress.checks import PASS, CheckChain, CheckContext, CheckServices
from ingress.checks.recipient import (
    LOOKUP_FAILED,
    MAILBOX_DISABLED,
    USER_UNKNOWN,
    RecipientCheck,
    RecipientSettings,
)
from ingress.checks.relay import RelayCheck
from pipeline.clients.directory import Directory
from pipeline.config import parse_section
from tests.servers import SLAPD_HOST, SlapdServer

LOCAL = frozenset({"school.test", "school.example"})


def context() -> CheckContext:
    return CheckContext(session_id="t1", client_ip="192.0.2.10", sender="someone@example.org")


def check(directory: Directory | None, settings: RecipientSettings | None = None) -> RecipientCheck:
    return RecipientCheck(settings or RecipientSettings(), CheckServices(directory=directory, local_domains=LOCAL))


def unreachable_directory() -> Directory:
    """A directory on a port where nothing listens: every lookup fails at once."""
    with socket.socket() as s:
        s.bind((SLAPD_HOST, 0))
        port = s.getsockname()[1]
    return Directory(SLAPD_HOST, port, "dc=school,dc=test", timeout=1.0)


@pytest.mark.parametrize("recipient", [
    "max.mustermann@school.test",
    "Max.Mustermann@SCHOOL.test",
    "sekretariat@school.test",  # an alias of anna
    "9a@school.test",  # a group
    "parents@school.test",
    "jahrgang9@school.test",  # a group of groups
    "verwaltung@school.test",  # groupOfUniqueNames
    "informatik-ag@school.test",  # posixGroup
    "elternbeirat@school.test",  # plain member addresses (nisMailAlias)
    "anna.schmidt@school.test.",  # a trailing dot on the domain
])
async def test_existing_recipients_pass(directory: Directory, recipient: str) -> None:
    assert await check(directory).rcpt(context(), recipient) == PASS


@pytest.mark.parametrize("recipient", ["nobody@school.test", "max.mustermann2@school.test", "*@school.test",
                                       '"*)(uid=*"@school.test', "max.mustermann@school.example"])
async def test_unknown_recipient_is_550_5_1_1(directory: Directory, recipient: str) -> None:
    decision = await check(directory).rcpt(context(), recipient)
    assert decision.reply == "550 5.1.1 Recipient address rejected: User unknown" == USER_UNKNOWN
    assert decision.reason_code == "unknown_recipient"


async def test_disabled_recipient_is_550_5_2_1(directory: Directory) -> None:
    decision = await check(directory).rcpt(context(), "old.student@school.test")
    assert decision.reply == MAILBOX_DISABLED
    assert decision.reply.startswith("550 5.2.1 Recipient address rejected: mailbox disabled")
    assert decision.reason_code == "recipient_disabled"
    assert "uid=old.student" in decision.detail


async def test_other_domains_are_not_looked_up(directory: Directory) -> None:
    for recipient in ("nobody@example.org", "max.mustermann@school.test.example.org", "x!y@example.org"):
        assert await check(directory).rcpt(context(), recipient) == PASS
    assert directory.requests == 0


@pytest.mark.parametrize("recipient", ["max.mustermann%example.org@school.test", "a!max.mustermann@school.test",
                                       '"max.mustermann"@school.test', "@relay.example:max.mustermann@school.test"])
async def test_routing_forms_in_a_local_domain_are_unknown(directory: Directory, recipient: str) -> None:
    decision = await check(directory).rcpt(context(), recipient)
    assert decision.reply == USER_UNKNOWN
    assert directory.requests == 0


async def test_role_addresses_pass_without_the_directory() -> None:
    down = unreachable_directory()
    try:
        for recipient in ("postmaster@school.test", "PostMaster@School.Test", "abuse@school.test",
                          "abuse@school.example"):
            assert await check(down).rcpt(context(), recipient) == PASS, recipient
        assert down.requests == 0
        assert (await check(down).rcpt(context(), "max.mustermann@school.test")).reply == LOOKUP_FAILED
    finally:
        await down.close()


async def test_always_accept_is_configurable(directory: Directory) -> None:
    section = tomllib.loads('[checks.recipient]\nalways_accept = ["postmaster", "Hostmaster"]\n')
    settings = parse_section(RecipientSettings, section["checks"]["recipient"], "checks.recipient")
    assert await check(directory, settings).rcpt(context(), "hostmaster@school.test") == PASS
    assert (await check(directory, settings).rcpt(context(), "abuse@school.test")).reply == USER_UNKNOWN


async def test_stopped_slapd_is_451_and_postmaster_still_passes(own_slapd: SlapdServer) -> None:
    directory = own_slapd.directory(timeout=1.0)
    recipient_check = check(directory)
    try:
        assert await recipient_check.rcpt(context(), "lena.mueller@school.test") == PASS
        own_slapd.stop()
        decision = await recipient_check.rcpt(context(), "tom.becker@school.test")
        assert decision.reply == "451 4.4.3 Recipient address lookup failed, try again later"
        assert decision.reason_code == "ldap_unavailable"
        assert decision.detail  # the cause, for the operator only
        assert str(own_slapd.port) not in decision.reply and SLAPD_HOST not in decision.reply
        assert await recipient_check.rcpt(context(), "postmaster@school.test") == PASS
    finally:
        await directory.close()


async def test_in_the_chain_after_relay(directory: Directory) -> None:
    services = CheckServices(directory=directory, local_domains=LOCAL)
    chain = CheckChain([RelayCheck(RelayCheck.Settings(), services), RecipientCheck(RecipientSettings(), services)],
                       timeout=5.0)
    await chain.start()
    outcome = await chain.run("rcpt", context(), "nobody@school.test")
    assert (outcome.check, outcome.decision.reply) == ("recipient", USER_UNKNOWN)
    outcome = await chain.run("rcpt", context(), "max%evil@school.test")
    assert outcome.check == "relay"  # routing forms are the relay check's: refused before any lookup
    assert (await chain.run("rcpt", context(), "tom.becker@school.test")).check == ""


async def test_start_needs_a_directory() -> None:
    with pytest.raises(RuntimeError, match="directory"):
        await check(None).start()
