"""The sender_domain check against the real NSD (sender domains of test.zone, see deploy/local/dns/)."""
from __future__ import annotations

import pytest

from ingress.checks import CheckContext, CheckServices
from ingress.checks.sender_domain import SenderDomainCheck, SenderDomainSettings
from pipeline.clients.dns import Resolver
from pipeline.settings import ConfigError
from tests.servers import NSD_HOST, FilteredTransport

UNKNOWN = "550 5.1.8 Sender address rejected: Domain not found"
TEMPFAIL = "450 4.1.8 Sender address rejected: Domain lookup failed; try again later"
MALFORMED = "501 5.1.7 Bad sender address syntax"


def sender_domain(resolver: Resolver, **settings) -> SenderDomainCheck:
    return SenderDomainCheck(SenderDomainSettings(**settings), CheckServices(resolver=resolver))


def ctx(**fields) -> CheckContext:
    return CheckContext(session_id="s1", client_ip="127.0.2.20", **fields)


@pytest.mark.parametrize("sender", [
    "alice@good.test",  # MX
    "bob@mailonly.test",  # A, no MX: implicit MX
    "carol@aaaaonly.test",  # AAAA only
    "Dave@GOOD.Test.",  # case and a final dot
    '"odd@local"@ext.test',  # a quoted local part holding an @: the domain is after the last @
    "user%relay@ext.test",
])
async def test_domains_that_accept_mail_pass(resolver: Resolver, sender: str) -> None:
    session = ctx()
    assert (await sender_domain(resolver).mail(session, sender)).reply is None
    assert session.notes == {}


@pytest.mark.parametrize(("sender", "in_detail"), [
    ("x@nonexistent.test", "nonexistent.test/MX nxdomain"),
    ("x@noaddress.test", "noaddress.test/A nodata; noaddress.test/AAAA nodata"),  # exists, no MX/A/AAAA
])
async def test_unknown_domains_are_refused(resolver: Resolver, sender: str, in_detail: str) -> None:
    decision = await sender_domain(resolver).mail(ctx(), sender)
    assert (decision.reply, decision.reason_code) == (UNKNOWN, "sender_domain_unknown")
    assert in_detail in decision.detail


async def test_null_mx_is_refused(resolver: Resolver) -> None:
    decision = await sender_domain(resolver).mail(ctx(), "noreply@nullmx.test")
    assert decision.reply == "550 5.7.27 Sender address rejected: Domain does not accept mail"
    assert decision.reason_code == "sender_domain_null_mx"


async def test_null_sender_passes_without_asking(dead_resolver: Resolver) -> None:
    assert (await sender_domain(dead_resolver).mail(ctx(), "")).reply is None


# --- temporary failures --------------------------------------------------------------------------


async def test_refused_is_a_tempfail(resolver: Resolver) -> None:
    """NSD refuses names outside its zones, as a broken resolver would."""
    decision = await sender_domain(resolver).mail(ctx(), "someone@example.org")
    assert (decision.reply, decision.reason_code) == (TEMPFAIL, "sender_domain_tempfail")
    assert "example.org/MX tempfail (rcode REFUSED)" in decision.detail
    assert "REFUSED" not in decision.reply


async def test_no_answer_is_a_tempfail(dead_resolver: Resolver) -> None:
    decision = await sender_domain(dead_resolver).mail(ctx(), "alice@good.test")
    assert decision.reply == TEMPFAIL


async def test_failed_implicit_mx_lookup_is_a_tempfail(nsd) -> None:
    """No MX, the A lookup fails, no AAAA: the A might have existed."""
    transport = FilteredTransport(nsd.port, frozenset({"mailonly.test/A"}))
    decision = await sender_domain(Resolver(NSD_HOST, nsd.port, transport=transport)).mail(ctx(), "b@mailonly.test")
    assert decision.reason_code == "sender_domain_tempfail"
    assert transport.asked[0] == "mailonly.test/MX"
    # one usable family is enough
    transport = FilteredTransport(nsd.port, frozenset({"mailonly.test/AAAA"}))
    decision = await sender_domain(Resolver(NSD_HOST, nsd.port, transport=transport)).mail(ctx(), "b@mailonly.test")
    assert decision.reply is None


async def test_skip_mode_passes_with_a_note(dead_resolver: Resolver) -> None:
    session = ctx()
    assert (await sender_domain(dead_resolver, on_error="skip").mail(session, "alice@good.test")).reply is None
    assert session.notes["sender_domain"] == "skipped_tempfail"


async def test_skip_mode_still_refuses_what_is_known_to_be_bad(resolver: Resolver) -> None:
    decision = await sender_domain(resolver, on_error="skip").mail(ctx(), "x@nonexistent.test")
    assert decision.reason_code == "sender_domain_unknown"


# --- syntax and address literals -----------------------------------------------------------------


@pytest.mark.parametrize("sender", [
    "no-at-sign", "user@", "@good.test", "user@good..test", "user@.good.test", "us er@good.test",
    "user@" + "a" * 64 + ".test", "user@good.test\r\nRCPT TO:<x@y>", "user@[127.0.0.1", "user@good.test]",
])
async def test_malformed_sender(dead_resolver: Resolver, sender: str) -> None:
    decision = await sender_domain(dead_resolver).mail(ctx(), sender)
    assert (decision.reply, decision.reason_code) == (MALFORMED, "sender_malformed")


async def test_address_literals_refused_by_default(dead_resolver: Resolver) -> None:
    decision = await sender_domain(dead_resolver).mail(ctx(), "user@[127.0.2.20]")
    assert decision.reply == "550 5.7.1 Sender address rejected: Address literals are not accepted"
    assert decision.reason_code == "sender_domain_literal"

    session = ctx()
    allowing = sender_domain(dead_resolver, allow_address_literals=True)
    assert (await allowing.mail(session, "user@[127.0.2.20]")).reply is None
    assert session.notes["sender_domain"] == "address_literal"


# --- skips and settings --------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "note"), [
    ({"allowlisted": True}, "allowlisted"),
    ({"authenticated_as": "lehrer1"}, "authenticated"),
])
async def test_skipped_sessions(resolver: Resolver, fields: dict, note: str) -> None:
    session = ctx(**fields)
    assert (await sender_domain(resolver).mail(session, "x@nonexistent.test")).reply is None
    assert session.notes["sender_domain"] == note


def test_bad_on_error() -> None:
    with pytest.raises(ConfigError, match="checks.sender_domain.on_error: expected tempfail or skip"):
        SenderDomainSettings(on_error="ignore")
