"""The dnsbl check against the real NSD: zen.dnsbl.test (SBL-like 127.0.0.2, PBL-like 127.0.0.10/11)
and bl.dnsbl.test, see deploy/local/dns/."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import dns.message
import pytest

from ingress.checks import CheckChain, CheckContext, CheckServices
from ingress.checks.dnsbl import DnsblCheck, DnsblSettings
from pipeline.clients.dns import Resolver, UdpTcpTransport
from pipeline.clients.dnslists import ListSite
from pipeline.config import load_settings
from pipeline.settings import ConfigError
from tests.servers import NSD_HOST

ZEN_SBL = ListSite(zone="zen.dnsbl.test", codes=["127.0.0.2-127.0.0.3"], weight=3)
ZEN_PBL = ListSite(zone="zen.dnsbl.test", codes=["127.0.0.10-127.0.0.11"], weight=2)
BL = ListSite(zone="bl.dnsbl.test", weight=1)
SITES = [ZEN_SBL, ZEN_PBL, BL]


def dnsbl(resolver: Resolver, sites: list[ListSite] = SITES, threshold: int = 3, **options) -> DnsblCheck:
    return DnsblCheck(DnsblSettings(sites=sites, threshold=threshold, **options), CheckServices(resolver=resolver))


def ctx(ip: str, **fields) -> CheckContext:
    return CheckContext(session_id="s1", client_ip=ip, **fields)


# --- listed, at / over / below the threshold ------------------------------------------------------


async def test_sbl_listing_alone_reaches_the_threshold(resolver: Resolver) -> None:
    decision = await dnsbl(resolver).connect(ctx("127.0.1.66"))
    assert decision.reply == "554 5.7.1 Service unavailable; client [127.0.1.66] blocked using zen.dnsbl.test"
    assert decision.reason_code == "dnsbl_listed"
    assert decision.detail == "score 3/3; 127.0.1.66 in zen.dnsbl.test 127.0.0.2 (+3)"


async def test_two_codes_of_one_entry_count_once(resolver: Resolver) -> None:
    """127.0.1.67 answers 127.0.0.10 and 127.0.0.11: the PBL entry adds 2 once, not 4."""
    session = ctx("127.0.1.67")
    decision = await dnsbl(resolver).connect(session)
    assert decision.reply is None
    assert session.notes["dnsbl"] == "score=2"


async def test_listed_in_two_zones_adds_up(resolver: Resolver) -> None:
    decision = await dnsbl(resolver, threshold=4).connect(ctx("127.0.1.69"))  # zen 3 + bl 1, at 4
    assert decision.reply == "554 5.7.1 Service unavailable; client [127.0.1.69] blocked using zen.dnsbl.test"
    assert "zen.dnsbl.test 127.0.0.2 (+3)" in decision.detail and "bl.dnsbl.test 127.0.0.2 (+1)" in decision.detail
    assert decision.detail.startswith("score 4/4")

    session = ctx("127.0.1.69")
    assert not (await dnsbl(resolver, threshold=5).connect(session)).refused  # 4 is below 5
    assert session.notes["dnsbl"] == "score=4"


async def test_two_zones_each_below_together_over(resolver: Resolver) -> None:
    sites = [ListSite(zone="zen.dnsbl.test", weight=2), ListSite(zone="bl.dnsbl.test", weight=2)]
    assert (await dnsbl(resolver, sites, threshold=4).connect(ctx("127.0.1.69"))).refused
    for ip in ("127.0.1.66", "127.0.1.68"):
        session = ctx(ip)
        assert not (await dnsbl(resolver, sites, threshold=4).connect(session)).refused
        assert session.notes["dnsbl"] == "score=2"


async def test_the_reply_names_the_heaviest_list_by_its_public_name(resolver: Resolver) -> None:
    sites = [ListSite(zone="bl.dnsbl.test", weight=1),
             ListSite(zone="zen.dnsbl.test", weight=2, name="zen.example")]  # e.g. a zone with an access key
    decision = await dnsbl(resolver, sites, threshold=2).connect(ctx("127.0.1.69"))
    assert decision.reply == "554 5.7.1 Service unavailable; client [127.0.1.69] blocked using zen.example"
    assert "zen.dnsbl.test" not in decision.reply


async def test_negative_weight_of_an_allowlist_offsets(resolver: Resolver) -> None:
    sites = [ZEN_SBL, ListSite(zone="bl.dnsbl.test", weight=-5)]
    session = ctx("127.0.1.69")
    assert not (await dnsbl(resolver, sites).connect(session)).refused
    assert session.notes["dnsbl"] == "score=-2"


async def test_ipv6_client_in_nibble_format(resolver: Resolver) -> None:
    decision = await dnsbl(resolver).connect(ctx("2001:db8::66"))
    assert decision.reply == "554 5.7.1 Service unavailable; client [2001:db8::66] blocked using zen.dnsbl.test"
    mapped = await dnsbl(resolver).connect(ctx("::ffff:127.0.1.66"))
    assert mapped.reply == "554 5.7.1 Service unavailable; client [127.0.1.66] blocked using zen.dnsbl.test"


# --- not listed ------------------------------------------------------------------------------------


@pytest.mark.parametrize("ip", ["127.0.0.1", "127.0.2.10", "2001:db8::67"])
async def test_not_listed_passes_without_a_note(resolver: Resolver, ip: str) -> None:
    session = ctx(ip)
    assert (await dnsbl(resolver).connect(session)).reply is None
    assert "dnsbl" not in session.notes


async def test_error_codes_are_no_listing(resolver: Resolver) -> None:
    """127.0.1.70 answers 127.255.255.254 (a list refusing the query); no codes: not counted."""
    session = ctx("127.0.1.70")
    assert not (await dnsbl(resolver, [ListSite(zone="zen.dnsbl.test")], threshold=1).connect(session)).refused
    assert "dnsbl" not in session.notes
    # the same answer is counted when an entry asks for it explicitly
    wanted = [ListSite(zone="zen.dnsbl.test", codes=["127.255.255.254"])]
    assert (await dnsbl(resolver, wanted, threshold=1).connect(ctx("127.0.1.70"))).refused


# --- temporary failures ----------------------------------------------------------------------------


async def test_no_answer_is_a_tempfail(dead_resolver: Resolver) -> None:
    decision = await dnsbl(dead_resolver).connect(ctx("127.0.1.66"))
    assert decision.reply == "451 4.7.1 Service temporarily unavailable; try again later"
    assert decision.reason_code == "dnsbl_tempfail" and decision.temporary
    assert "tempfail 66.1.0.127.zen.dnsbl.test/A" in decision.detail
    assert "tempfail 66.1.0.127.bl.dnsbl.test/A" in decision.detail


async def test_skip_mode_passes_with_a_note(dead_resolver: Resolver) -> None:
    session = ctx("127.0.1.66")
    assert not (await dnsbl(dead_resolver, on_error="skip").connect(session)).refused
    assert session.notes["dnsbl"] == "skipped_tempfail"


async def test_a_listing_that_reaches_the_threshold_wins_over_a_failed_zone(resolver: Resolver) -> None:
    """example.org is outside NSD's zones: REFUSED, a temporary failure."""
    sites = [ZEN_SBL, ListSite(zone="example.org", weight=3)]
    listed = await dnsbl(resolver, sites).connect(ctx("127.0.1.66"))
    assert listed.reason_code == "dnsbl_listed"
    assert "tempfail 66.1.0.127.example.org/A tempfail (rcode REFUSED)" in listed.detail
    clean = await dnsbl(resolver, sites).connect(ctx("127.0.2.10"))
    assert clean.reason_code == "dnsbl_tempfail"
    assert "example.org" not in clean.reply


async def test_zones_are_asked_concurrently(nsd) -> None:
    class Slow:
        def __init__(self) -> None:
            self.forward = UdpTcpTransport(NSD_HOST, nsd.port)

        async def __call__(self, request: dns.message.Message, timeout: float) -> dns.message.Message:
            await asyncio.sleep(0.3)
            return await self.forward(request, timeout)

    resolver = Resolver(NSD_HOST, nsd.port, timeout=2, transport=Slow())
    started = time.monotonic()
    sites = [ListSite(zone="zen.dnsbl.test", weight=2), ListSite(zone="bl.dnsbl.test", weight=2)]
    assert (await dnsbl(resolver, sites, threshold=4).connect(ctx("127.0.1.69"))).refused
    assert time.monotonic() - started < 0.55  # two zones in the time of one


# --- who is not checked ----------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "note"), [
    ({"allowlisted": True}, "allowlisted"),
    ({"authenticated_as": "lehrer1"}, "authenticated"),
    ({"listener": "submission"}, "not_mx"),
])
async def test_skipped_sessions_ask_nothing(dead_resolver: Resolver, fields: dict, note: str) -> None:
    session = ctx("127.0.1.66", **fields)
    started = time.monotonic()
    assert not (await dnsbl(dead_resolver).connect(session)).refused
    assert time.monotonic() - started < 0.1  # the dead resolver would have taken its timeout
    assert session.notes["dnsbl"] == note


async def test_no_sites_configured_passes(dead_resolver: Resolver) -> None:
    session = ctx("127.0.1.66")
    assert not (await dnsbl(dead_resolver, sites=[], threshold=1).connect(session)).refused
    assert session.notes == {}


# --- configuration ---------------------------------------------------------------------------------


def _load(tmp_path: Path, text: str):
    path = tmp_path / "poststelle.toml"
    path.write_text(text)
    return load_settings(path, environ={})


DNSBL_TOML = """
[checks.dnsbl]
threshold = 3
on_error = "tempfail"

[[checks.dnsbl.sites]]
zone = "zen.dnsbl.test"
codes = ["127.0.0.2-127.0.0.3"]
weight = 3

[[checks.dnsbl.sites]]
zone = "zen.dnsbl.test"
codes = ["127.0.0.10-127.0.0.11"]
weight = 2

[[checks.dnsbl.sites]]
zone = "bl.dnsbl.test"
"""


async def test_configured_as_data_and_run_by_the_chain(tmp_path: Path, resolver: Resolver) -> None:
    settings = _load(tmp_path, DNSBL_TOML)
    assert settings.checks["dnsbl"] == DnsblSettings(sites=SITES, threshold=3)
    chain = CheckChain.build(["dnsbl"], settings.checks, CheckServices(resolver=resolver), timeout=5)
    outcome = await chain.run("connect", ctx("127.0.1.66"))
    assert (outcome.check, outcome.decision.reason_code) == ("dnsbl", "dnsbl_listed")
    assert not (await chain.run("connect", ctx("127.0.1.67"))).refused


@pytest.mark.parametrize(("change", "message"), [
    (("127.0.0.3\"", "127.0.0.x\""), r"checks.dnsbl.sites\[0\].codes: '127.0.0.2-127.0.0.x' is not an IPv4"),
    (("127.0.0.11\"]", "127.0.0.9\"]"), r"checks.dnsbl.sites\[1\].codes: '127.0.0.10-127.0.0.9' ends before"),
    (('zone = "bl.dnsbl.test"', 'weight = 1'), r"checks.dnsbl.sites\[2\].zone: required"),
    (("threshold = 3", "threshold = 0"), "checks.dnsbl.threshold: expected at least 1"),
    (('on_error = "tempfail"', 'on_error = "ignore"'), "checks.dnsbl.on_error: expected tempfail or skip"),
    (("weight = 3", 'weight = "3"'), r"checks.dnsbl.sites\[0\].weight: expected an integer"),
])
def test_bad_settings_are_refused_at_load(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _load(tmp_path, DNSBL_TOML.replace(*change))
