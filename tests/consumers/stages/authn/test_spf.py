"""SPF (RFC 7208) evaluation against the real NSD serving deploy/local/dns/test.zone."""
from __future__ import annotations

import ipaddress

import pytest

from consumers.stages.authn.spf import check_host, expand_macros, spf_identity
from pipeline.clients.dns import Resolver
from tests.servers import NSD_HOST, FilteredTransport


@pytest.mark.parametrize(("ip", "sender", "result", "reason_part"), [
    ("127.0.2.10", "a@good.test", "pass", "ip4:127.0.2.10"),
    ("127.0.2.20", "a@good.test", "fail", "-all"),
    ("127.0.2.10", "a@signed.test", "pass", "include:spf-chain.signed.test"),  # include chain, 2 deep
    ("127.0.2.20", "a@signed.test", "softfail", "~all"),
    ("127.0.2.60", "a@spf-a.test", "pass", "spf-a.test: a"),
    ("127.0.2.10", "a@spf-a.test", "pass", "spf-a.test: mx"),
    ("127.0.2.77", "a@spf-a.test", "fail", "-all"),
    ("127.0.2.10", "a@spf-redirect.test", "pass", "good.test: ip4"),
    ("127.0.2.20", "a@spf-redirect.test", "fail", "good.test: -all"),
    ("127.0.2.10", "a@spf-exists.test", "pass", "exists:"),  # %{ir}.%{v} macros
    ("127.0.2.11", "a@spf-exists.test", "fail", "-all"),
    ("127.0.2.10", "a@spf-ptr.test", "pass", "ptr:good.test"),  # 127.0.2.10 -> mx.good.test, confirmed
    ("127.0.2.11", "a@spf-ptr.test", "fail", "-all"),  # PTR mx.mismatch.test, not confirmed
    ("2001:db8::1", "a@spf-ip6.test", "pass", "ip6:2001:db8::/32"),
    ("::ffff:127.0.2.5", "a@spf-ip6.test", "pass", "ip4:127.0.2.0/24"),  # IPv4-mapped counts as IPv4
    ("127.0.3.1", "a@spf-ip6.test", "neutral", "?all"),
    ("127.0.2.10", "a@spf-loop.test", "permerror", "more than 10 DNS lookups"),
    ("127.0.2.10", "a@spf-void.test", "permerror", "more than 2 void lookups"),
    ("127.0.2.10", "a@spf-two.test", "permerror", "2 SPF records"),
    ("127.0.2.10", "a@spf-bad.test", "permerror", "unknown term 'foo:bar'"),
    ("127.0.2.10", "a@spf-include-none.test", "permerror", "include:ext.test has no SPF record"),
    ("127.0.2.10", "a@ext.test", "none", "no SPF record"),
    ("127.0.2.10", "a@nonexistent.test", "none", "no SPF record"),
    ("127.0.2.10", "a@example.org", "temperror", "REFUSED"),  # NSD is not authoritative: no answer
])
async def test_results_for_the_test_zone(resolver, ip, sender, result, reason_part):
    outcome = await check_host(resolver, ip, sender, "client.test")
    assert (outcome.result, outcome.identity) == (result, "mailfrom")
    assert reason_part in outcome.reason


async def test_the_null_sender_is_checked_with_the_helo_name(resolver):
    outcome = await check_host(resolver, "127.0.2.10", "", "good.test")
    assert (outcome.result, outcome.domain, outcome.identity) == ("pass", "good.test", "helo")
    assert (await check_host(resolver, "127.0.2.20", "", "good.test")).result == "fail"


async def test_a_helo_that_is_no_domain_gives_none(resolver):
    outcome = await check_host(resolver, "127.0.2.10", "", "[127.0.2.10]")
    assert outcome.result == "none"


async def test_a_servfail_inside_an_include_is_temperror_not_fail(nsd):
    transport = FilteredTransport(nsd.port, servfail=frozenset({"spf-chain.signed.test/TXT"}))
    outcome = await check_host(Resolver(NSD_HOST, nsd.port, 2.0, transport=transport), "127.0.2.10",
                               "a@signed.test", "client.test")
    assert outcome.result == "temperror" and "spf-chain.signed.test/TXT" in outcome.reason


async def test_a_dead_name_server_is_temperror(dead_resolver):
    assert (await check_host(dead_resolver, "127.0.2.10", "a@good.test", "x.test")).result == "temperror"


def test_macro_expansion_follows_the_rfc_examples():
    # RFC 7208 7.4, with sender strong-bad@email.example.com and IP 192.0.2.3
    ip = ipaddress.ip_address("192.0.2.3")
    args = (ip, "strong-bad@email.example.com", "email.example.com", "mx.example.org")
    assert expand_macros("%{s}", *args) == "strong-bad@email.example.com"
    assert expand_macros("%{o}", *args) == "email.example.com"
    assert expand_macros("%{d4}", *args) == "email.example.com"
    assert expand_macros("%{d2}", *args) == "example.com"
    assert expand_macros("%{dr}", *args) == "com.example.email"
    assert expand_macros("%{l-}", *args) == "strong.bad"
    assert expand_macros("%{lr-}", *args) == "bad.strong"
    assert expand_macros("%{ir}.%{v}._spf.%{d2}", *args) == "3.2.0.192.in-addr._spf.example.com"
    v6 = ipaddress.ip_address("2001:db8::cb01")
    assert expand_macros("%{ir}.%{v}", v6, *args[1:]).endswith(".b.d.0.1.0.0.2.ip6")


def test_identity_of_the_null_sender_is_postmaster_at_helo():
    assert spf_identity("", "Mail.Example.ORG.") == ("postmaster@mail.example.org", "mail.example.org", "helo")
    assert spf_identity("@x.test", "h") == ("postmaster@x.test", "x.test", "mailfrom")
