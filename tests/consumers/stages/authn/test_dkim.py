"""DKIM verification of every signature, keys from the real NSD (deploy/local/dns/test.zone)."""
from __future__ import annotations

import pytest

from consumers.stages.authn.dkim import verify_signatures
from pipeline.clients.dns import Resolver
from tests.consumers.stages.authn.fixtures import message, sign
from tests.servers import NSD_HOST, FilteredTransport


async def test_a_message_without_signature_has_no_results(resolver):
    assert await verify_signatures(resolver, message()) == []


@pytest.mark.parametrize("canonicalize", [(b"relaxed", b"simple"), (b"simple", b"simple"),
                                          (b"relaxed", b"relaxed"), (b"simple", b"relaxed")])
async def test_rsa_signatures_verify_in_every_canonicalisation(resolver, canonicalize):
    (outcome,) = await verify_signatures(resolver, sign(message(), canonicalize=canonicalize))
    assert (outcome.result, outcome.domain, outcome.selector, outcome.algorithm) == (
        "pass", "good.test", "sel", "rsa-sha256")
    assert len(outcome.signature_start) == 8


async def test_ed25519_signature_verifies(resolver):
    raw = sign(message("a@signed.test"), domain="signed.test", selector="ed", algorithm="ed25519-sha256")
    (outcome,) = await verify_signatures(resolver, raw)
    assert (outcome.result, outcome.domain, outcome.algorithm) == ("pass", "signed.test", "ed25519-sha256")


async def test_relaxed_canonicalisation_survives_whitespace_changes(resolver):
    raw = sign(message(), canonicalize=(b"relaxed", b"relaxed"))
    rewrapped = raw.replace(b"Subject: Elternabend", b"Subject:   Elternabend ").replace(b"bis morgen.", b"bis   morgen.")
    assert [o.result for o in await verify_signatures(resolver, rewrapped)] == ["pass"]
    strict = sign(message(), canonicalize=(b"simple", b"simple"))
    assert [o.result for o in await verify_signatures(resolver, strict.replace(b"bis morgen.", b"bis  morgen."))] == ["fail"]


async def test_a_tampered_body_fails(resolver):
    raw = sign(message()).replace(b"bis morgen.", b"bis heute.")
    (outcome,) = await verify_signatures(resolver, raw)
    assert outcome.result == "fail" and "body hash mismatch" in outcome.reason


async def test_a_tampered_signed_header_fails(resolver):
    raw = sign(message()).replace(b"Subject: Elternabend", b"Subject: Rechnung")
    (outcome,) = await verify_signatures(resolver, raw)
    assert outcome.result == "fail" and outcome.reason == "signature does not verify"


async def test_l_tag_leaving_appended_text_unsigned_is_policy_unless_allowed(resolver):
    raw = sign(message(), length=True) + b"Klicken Sie hier: http://bad-link.test/\r\n"
    (strict,) = await verify_signatures(resolver, raw)
    assert strict.result == "policy" and "unsigned" in strict.reason
    (lenient,) = await verify_signatures(resolver, raw, allow_partial_body=True)
    assert lenient.result == "pass"
    (whole,) = await verify_signatures(resolver, sign(message(), length=True))
    assert whole.result == "pass"  # l= covering the whole body is fine


async def test_every_signature_is_verified(resolver):
    raw = sign(sign(message("a@signed.test"), domain="signed.test", selector="ed", algorithm="ed25519-sha256"))
    raw = sign(raw, domain="strict.test")
    outcomes = await verify_signatures(resolver, raw)
    assert [(o.domain, o.result) for o in outcomes] == [("strict.test", "pass"), ("good.test", "pass"),
                                                         ("signed.test", "pass")]
    capped = await verify_signatures(resolver, raw, max_signatures=2)
    assert [o.result for o in capped] == ["pass", "pass", "neutral"]


@pytest.mark.parametrize(("selector", "domain", "reason_part"), [
    ("nokey", "good.test", "no key at nokey._domainkey.good.test (nxdomain)"),
    ("revoked", "signed.test", "unusable key"),
])
async def test_missing_or_revoked_keys_are_permerror(resolver, selector, domain, reason_part):
    (outcome,) = await verify_signatures(resolver, sign(message(), domain=domain, selector=selector))
    assert outcome.result == "permerror" and reason_part in outcome.reason


async def test_a_key_of_the_wrong_type_is_permerror(resolver):
    raw = sign(message(), domain="signed.test", selector="ed")  # RSA signature, ed25519 key
    (outcome,) = await verify_signatures(resolver, raw)
    assert outcome.result == "permerror" and "does not match" in outcome.reason


async def test_rsa_sha1_is_not_accepted(resolver):
    (outcome,) = await verify_signatures(resolver, sign(message(), algorithm="rsa-sha1"))
    assert outcome.result == "permerror" and "RFC 8301" in outcome.reason


async def test_a_broken_signature_field_is_permerror_not_a_crash(resolver):
    raw = b"DKIM-Signature: v=1; a=rsa-sha256; this is not a tag list\r\n" + message()
    (outcome,) = await verify_signatures(resolver, raw)
    assert outcome.result == "permerror"


async def test_a_key_lookup_servfail_is_temperror(nsd):
    transport = FilteredTransport(nsd.port, servfail=frozenset({"sel._domainkey.good.test/TXT"}))
    (outcome,) = await verify_signatures(Resolver(NSD_HOST, nsd.port, 2.0, transport=transport), sign(message()))
    assert outcome.result == "temperror" and "SERVFAIL" in outcome.reason


async def test_lf_only_messages_are_verified_as_crlf(resolver):
    raw = sign(message()).replace(b"\r\n", b"\n")
    assert [o.result for o in await verify_signatures(resolver, raw)] == ["pass"]
