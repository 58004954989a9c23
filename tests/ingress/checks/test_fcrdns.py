"""The fcrdns check against the real NSD (PTR records in 127.in-addr.arpa, see deploy/local/dns/)."""
from __future__ import annotations

import pytest

from ingress.checks import CheckContext, CheckServices
from ingress.checks.fcrdns import FcrdnsCheck, FcrdnsSettings
from pipeline.clients.dns import Resolver
from pipeline.settings import ConfigError
from tests.servers import NSD_HOST, FilteredTransport

FAILED = "550 5.7.25 Reverse DNS validation failed"
TEMPFAIL = "450 4.7.25 Reverse DNS validation failed temporarily; try again later"


def fcrdns(resolver: Resolver, **settings) -> FcrdnsCheck:
    return FcrdnsCheck(FcrdnsSettings(**settings), CheckServices(resolver=resolver))


def ctx(ip: str, **fields) -> CheckContext:
    return CheckContext(session_id="s1", client_ip=ip, **fields)


# --- confirmed -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("ip", "name"), [
    ("127.0.2.10", "mx.good.test"),
    ("127.0.0.1", "localhost"),
    ("::ffff:127.0.2.20", "mx.ext.test"),
    ("127.0.2.14", "mx2.good.test"),  # two PTRs: mx.dangling.test does not exist, mx2.good.test leads back
])
async def test_confirmed(resolver: Resolver, ip: str, name: str) -> None:
    session = ctx(ip)
    assert (await fcrdns(resolver).connect(session)).reply is None
    assert session.reverse_name == name
    assert session.notes["fcrdns"] == "pass"


async def test_a_confirmed_name_wins_over_a_failed_one(nsd) -> None:
    transport = FilteredTransport(nsd.port, frozenset({"mx.dangling.test/A"}))
    session = ctx("127.0.2.14")
    assert (await fcrdns(Resolver(NSD_HOST, nsd.port, transport=transport)).connect(session)).reply is None
    assert session.reverse_name == "mx2.good.test"


# --- not confirmed -------------------------------------------------------------------------------


@pytest.mark.parametrize(("ip", "in_detail"), [
    ("127.0.2.11", "mx.mismatch.test/A 127.0.2.99"),  # the PTR name points elsewhere
    ("127.0.2.12", "no PTR: 12.2.0.127.in-addr.arpa/PTR nxdomain"),
    ("127.0.2.13", "mx.dangling.test/A nxdomain"),  # the PTR name does not exist
    ("127.0.2.99", "no PTR"),
])
async def test_not_confirmed_is_refused(resolver: Resolver, ip: str, in_detail: str) -> None:
    session = ctx(ip)
    decision = await fcrdns(resolver).connect(session)
    assert decision.reply == FAILED and decision.reason_code == "fcrdns_failed"
    assert in_detail in decision.detail
    assert session.reverse_name == ""


async def test_note_mode_lets_the_client_in(resolver: Resolver) -> None:
    session = ctx("127.0.2.11")
    assert (await fcrdns(resolver, action="note").connect(session)).reply is None
    assert session.notes["fcrdns"] == "fail" and session.reverse_name == ""


def test_defaults_reject_and_tempfail() -> None:
    assert FcrdnsSettings().action == "reject"
    assert FcrdnsSettings().on_error == "tempfail"


# --- temporary failures --------------------------------------------------------------------------


async def test_no_answer_is_a_tempfail(dead_resolver: Resolver) -> None:
    decision = await fcrdns(dead_resolver).connect(ctx("127.0.2.10"))
    assert decision.reply == TEMPFAIL and decision.reason_code == "fcrdns_tempfail"
    assert "10.2.0.127.in-addr.arpa/PTR tempfail" in decision.detail


async def test_refused_reverse_zone_is_a_tempfail(resolver: Resolver) -> None:
    """NSD serves no ip6.arpa zone: REFUSED, as from a lame reverse delegation."""
    decision = await fcrdns(resolver).connect(ctx("2001:db8::66"))
    assert decision.reason_code == "fcrdns_tempfail"
    assert "rcode REFUSED" in decision.detail


async def test_failed_forward_lookup_is_a_tempfail(nsd) -> None:
    transport = FilteredTransport(nsd.port, frozenset({"mx.good.test/A"}))
    decision = await fcrdns(Resolver(NSD_HOST, nsd.port, transport=transport)).connect(ctx("127.0.2.10"))
    assert decision.reason_code == "fcrdns_tempfail"
    assert "mx.good.test/A tempfail (rcode SERVFAIL)" in decision.detail


async def test_skip_mode_passes_with_a_note(dead_resolver: Resolver) -> None:
    session = ctx("127.0.2.10")
    assert (await fcrdns(dead_resolver, on_error="skip").connect(session)).reply is None
    assert session.notes["fcrdns"] == "skipped_tempfail" and session.reverse_name == ""


# --- limits and skips ----------------------------------------------------------------------------


async def test_names_followed_are_capped(nsd) -> None:
    transport = FilteredTransport(nsd.port)
    await fcrdns(Resolver(NSD_HOST, nsd.port, transport=transport), max_names=1).connect(ctx("127.0.2.14"))
    assert transport.asked[0] == "14.2.0.127.in-addr.arpa/PTR"
    assert len(transport.asked) == 2  # the PTR and one of its two names


@pytest.mark.parametrize(("fields", "note"), [
    ({"allowlisted": True}, "allowlisted"),
    ({"authenticated_as": "lehrer1"}, "authenticated"),
    ({"listener": "submission"}, "not_mx"),
])
async def test_skipped_sessions(dead_resolver: Resolver, fields: dict, note: str) -> None:
    session = ctx("127.0.2.11", **fields)
    assert (await fcrdns(dead_resolver).connect(session)).reply is None
    assert session.notes["fcrdns"] == note


@pytest.mark.parametrize(("settings", "message"), [
    ({"action": "block"}, "checks.fcrdns.action: expected reject or note"),
    ({"on_error": "pass"}, "checks.fcrdns.on_error: expected tempfail or skip"),
    ({"max_names": 0}, "checks.fcrdns.max_names: expected at least 1"),
])
def test_bad_settings(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        FcrdnsSettings(**settings)
