"""DMARC (RFC 7489): From domain, policy discovery at the real NSD, alignment and disposition."""
from __future__ import annotations

import pytest

from consumers.stages.authn.dkim import DkimOutcome
from consumers.stages.authn.dmarc import evaluate, organizational_domain, parse_record, sample_of
from consumers.stages.authn.spf import SpfOutcome
from pipeline.clients.dns import Resolver
from tests.servers import NSD_HOST, FilteredTransport

NO_SPF = SpfOutcome("fail", "ext.test", "mailfrom")


def spf(result: str, domain: str) -> SpfOutcome:
    return SpfOutcome(result, domain, "mailfrom")  # type: ignore[arg-type]


def dkim(result: str, domain: str) -> DkimOutcome:
    return DkimOutcome(result, domain, "sel", "rsa-sha256")  # type: ignore[arg-type]


@pytest.mark.parametrize(("domain", "org"), [
    ("good.test", "good.test"), ("news.mail.good.test", "good.test"), ("mail.example.co.uk", "example.co.uk"),
    ("WWW.Example.COM.", "example.com"), ("co.uk", "co.uk"),
])
def test_organizational_domain_uses_the_public_suffix_list(domain, org):
    assert organizational_domain(domain) == org


def test_record_parsing_defaults_and_invalid_values():
    record = parse_record("v=DMARC1; p=reject; sp=bogus; pct=150; adkim=x", "x.test")
    assert (record.p, record.sp, record.pct, record.adkim, record.aspf) == ("reject", "reject", 100, "r", "r")
    assert parse_record("v=DMARC1; sp=reject", "x.test").p == "none"  # no p: treated as none
    assert parse_record("p=reject; v=DMARC1", "x.test") is None  # v= must come first
    assert parse_record("v=spf1 -all", "x.test") is None


async def test_aligned_spf_passes(resolver):
    outcome = await evaluate(resolver, "good.test", spf("pass", "good.test"), [])
    assert (outcome.result, outcome.policy, outcome.spf_aligned, outcome.dkim_aligned) == ("pass", "reject", True, False)


async def test_aligned_dkim_passes_even_when_spf_fails(resolver):
    outcome = await evaluate(resolver, "good.test", spf("fail", "good.test"), [dkim("pass", "good.test")])
    assert (outcome.result, outcome.dkim_aligned) == ("pass", True)


async def test_unaligned_passes_fail_with_the_reject_policy(resolver):
    outcome = await evaluate(resolver, "good.test", spf("pass", "ext.test"), [dkim("pass", "signed.test")])
    assert (outcome.result, outcome.policy, outcome.disposition, outcome.policy_domain) == (
        "fail", "reject", "reject", "good.test")
    assert "neither SPF (pass for ext.test) nor DKIM aligned with good.test" in outcome.reason


async def test_a_subdomain_uses_the_organizational_policy_with_relaxed_alignment(resolver):
    outcome = await evaluate(resolver, "news.good.test", NO_SPF, [dkim("pass", "good.test")])
    assert (outcome.result, outcome.policy_domain) == ("pass", "good.test")


async def test_strict_alignment_and_the_subdomain_policy(resolver):
    outcome = await evaluate(resolver, "news.strict.test", spf("pass", "strict.test"), [dkim("pass", "strict.test")])
    assert (outcome.result, outcome.policy, outcome.disposition) == ("fail", "quarantine", "quarantine")
    assert "strict DKIM" in outcome.reason
    exact = await evaluate(resolver, "strict.test", NO_SPF, [dkim("pass", "strict.test")])
    assert (exact.result, exact.policy) == ("pass", "reject")


async def test_p_quarantine(resolver):
    outcome = await evaluate(resolver, "quarantine.test", spf("fail", "quarantine.test"), [])
    assert (outcome.result, outcome.disposition) == ("fail", "quarantine")


async def test_no_record_is_none(resolver):
    assert (await evaluate(resolver, "ext.test", NO_SPF, [])).result == "none"
    assert (await evaluate(resolver, "signed.test", NO_SPF, [])).result == "none"


async def test_a_policy_lookup_failure_is_temperror(resolver):
    outcome = await evaluate(resolver, "example.org", NO_SPF, [])  # NSD refuses names outside .test
    assert outcome.result == "temperror" and "REFUSED" in outcome.reason


async def test_an_aligned_temperror_makes_a_fail_a_temperror(nsd):
    transport = FilteredTransport(nsd.port)
    resolver = Resolver(NSD_HOST, nsd.port, 2.0, transport=transport)
    outcome = await evaluate(resolver, "good.test", spf("fail", "good.test"), [dkim("temperror", "good.test")])
    assert outcome.result == "temperror"
    unrelated = await evaluate(resolver, "good.test", spf("fail", "good.test"), [dkim("temperror", "ext.test")])
    assert unrelated.result == "fail"


def test_pct_sampling_is_fixed_by_the_message_id():
    assert sample_of("m-1") == sample_of("m-1")
    samples = [sample_of(f"m-{i}") for i in range(2000)]
    assert all(0 <= s < 1 for s in samples)
    assert 0.45 < sum(s < 0.5 for s in samples) / len(samples) < 0.55


async def test_outside_the_pct_sample_reject_becomes_quarantine(resolver):
    outcome = await evaluate(resolver, "pct.test", NO_SPF, [], sample=0.0)
    assert (outcome.result, outcome.policy, outcome.disposition) == ("fail", "reject", "quarantine")
