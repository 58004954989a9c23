"""The rhsbl check against the real NSD: dbl.rhsbl.test lists spammer.test (127.0.1.2) and
phish.test (127.0.1.4), see deploy/local/dns/."""
from __future__ import annotations

from pathlib import Path

import pytest

from ingress.checks import CheckContext, CheckServices
from ingress.checks.rhsbl import RhsblCheck, RhsblSettings, helo_domain
from pipeline.clients.dns import Resolver
from pipeline.clients.dnslists import ListSite
from pipeline.config import load_settings
from pipeline.settings import ConfigError

LISTED = "554 5.7.1 Sender address rejected: domain listed by dbl.rhsbl.test"
DBL = [ListSite(zone="dbl.rhsbl.test")]
# DBL-like codes: spam 127.0.1.2 counts 1, phishing 127.0.1.4-6 counts 2
DBL_WEIGHTED = [ListSite(zone="dbl.rhsbl.test", codes=["127.0.1.2"], weight=1),
                ListSite(zone="dbl.rhsbl.test", codes=["127.0.1.4-127.0.1.6"], weight=2)]


def rhsbl(resolver: Resolver, sites: list[ListSite] = DBL, **settings) -> RhsblCheck:
    return RhsblCheck(RhsblSettings(sites=sites, **settings), CheckServices(resolver=resolver))


def ctx(helo: str = "mx.ext.test", **fields) -> CheckContext:
    return CheckContext(session_id="s1", client_ip="127.0.2.40", helo=helo, **fields)


@pytest.mark.parametrize("sender", ["x@spammer.test", "x@Phish.Test."])
async def test_listed_sender_domain_is_refused(resolver: Resolver, sender: str) -> None:
    decision = await rhsbl(resolver).mail(ctx(), sender)
    assert (decision.reply, decision.reason_code) == (LISTED, "rhsbl_listed")
    assert f"{sender.split('@')[1].lower().rstrip('.')} in dbl.rhsbl.test 127.0.1." in decision.detail


@pytest.mark.parametrize("sender", ["x@good.test", "x@ext.test", "x@mx.spammer.test"])  # only exact names are listed
async def test_unlisted_sender_domain_passes(resolver: Resolver, sender: str) -> None:
    session = ctx()
    assert (await rhsbl(resolver).mail(session, sender)).reply is None
    assert session.notes == {}


async def test_weights_and_threshold(resolver: Resolver) -> None:
    session = ctx()
    assert (await rhsbl(resolver, DBL_WEIGHTED, threshold=2).mail(session, "x@spammer.test")).reply is None
    assert session.notes["rhsbl"] == "score=1"
    decision = await rhsbl(resolver, DBL_WEIGHTED, threshold=2).mail(ctx(), "x@phish.test")
    assert decision.reason_code == "rhsbl_listed" and decision.detail.startswith("score 2/2")


@pytest.mark.parametrize("sender", ["", "user@[127.0.2.40]"])
async def test_null_sender_and_literals_are_not_looked_up(dead_resolver: Resolver, sender: str) -> None:
    assert (await rhsbl(dead_resolver).mail(ctx(), sender)).reply is None


async def test_malformed_sender(dead_resolver: Resolver) -> None:
    decision = await rhsbl(dead_resolver).mail(ctx(), "no-domain@")
    assert (decision.reply, decision.reason_code) == ("501 5.1.7 Bad sender address syntax", "sender_malformed")


# --- the HELO name -------------------------------------------------------------------------------


async def test_listed_helo_name_with_check_helo(resolver: Resolver) -> None:
    decision = await rhsbl(resolver, check_helo=True).mail(ctx(helo="phish.test"), "x@good.test")
    assert decision.reply == "554 5.7.1 Helo command rejected: host name listed by dbl.rhsbl.test"
    assert (await rhsbl(resolver).mail(ctx(helo="phish.test"), "x@good.test")).reply is None  # off by default


async def test_a_site_counts_once_for_sender_and_helo(resolver: Resolver) -> None:
    session = ctx(helo="phish.test")
    assert (await rhsbl(resolver, check_helo=True, threshold=2).mail(session, "x@spammer.test")).reply is None
    assert session.notes["rhsbl"] == "score=1"


@pytest.mark.parametrize(("helo", "domain"), [
    ("mx.ext.test", "mx.ext.test"), ("MX.Ext.Test.", "mx.ext.test"),
    ("[127.0.2.40]", ""), ("localhost", ""), ("bad..name", ""), ("", ""),
])
def test_helo_names_worth_looking_up(helo: str, domain: str) -> None:
    assert helo_domain(helo) == domain


# --- temporary failures and skips ----------------------------------------------------------------


async def test_no_answer_is_a_tempfail(dead_resolver: Resolver) -> None:
    decision = await rhsbl(dead_resolver).mail(ctx(), "x@good.test")
    assert decision.reply == "451 4.7.1 Sender address rejected: Temporary failure checking the domain; try again later"
    assert decision.reason_code == "rhsbl_tempfail"
    assert "good.test.dbl.rhsbl.test/A tempfail" in decision.detail


async def test_skip_mode_passes_with_a_note(dead_resolver: Resolver) -> None:
    session = ctx()
    assert (await rhsbl(dead_resolver, on_error="skip").mail(session, "x@good.test")).reply is None
    assert session.notes["rhsbl"] == "skipped_tempfail"


@pytest.mark.parametrize(("fields", "note"), [
    ({"allowlisted": True}, "allowlisted"),
    ({"authenticated_as": "lehrer1"}, "authenticated"),
    ({"listener": "submission"}, "not_mx"),
])
async def test_skipped_sessions(resolver: Resolver, fields: dict, note: str) -> None:
    session = ctx(**fields)
    assert (await rhsbl(resolver).mail(session, "x@spammer.test")).reply is None
    assert session.notes["rhsbl"] == note


async def test_no_sites_configured_passes(dead_resolver: Resolver) -> None:
    assert (await rhsbl(dead_resolver, sites=[]).mail(ctx(), "x@spammer.test")).reply is None


def test_configured_as_data(tmp_path: Path) -> None:
    path = tmp_path / "poststelle.toml"
    path.write_text("""
[checks.rhsbl]
check_helo = true
threshold = 2

[[checks.rhsbl.sites]]
zone = "dbl.rhsbl.test"
codes = ["127.0.1.2"]

[[checks.rhsbl.sites]]
zone = "dbl.rhsbl.test"
codes = ["127.0.1.4-127.0.1.6"]
weight = 2
""")
    settings = load_settings(path, environ={})
    assert settings.checks["rhsbl"] == RhsblSettings(sites=DBL_WEIGHTED, threshold=2, check_helo=True)
    path.write_text('[checks.rhsbl]\non_error = "ignore"\n')
    with pytest.raises(ConfigError, match="checks.rhsbl.on_error"):
        load_settings(path, environ={})
