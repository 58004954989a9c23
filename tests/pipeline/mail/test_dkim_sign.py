"""DKIM signing of outbound mail: which mail is signed, and that what is signed verifies against the key
the local NSD publishes (s2026._domainkey.school.test, the public half of the TEST-ONLY school key)."""
from __future__ import annotations

import dkim
import pytest

from pipeline.clients.dns import Resolver
from pipeline.mail.dkim_sign import DkimSigner, signing_domain
from pipeline.outbound_settings import DkimKey, DkimSettings
from pipeline.settings import ConfigError

SCHOOL_KEY = DkimKey(domain="school.test", selector="s2026",
                     key_file="deploy/local/dns/keys/school.test.s2026.private")
MESSAGE = (b"From: Anna Schmidt <anna.schmidt@school.test>\r\nTo: <someone@outside.test>\r\n"
           b"Subject: Elternabend\r\nDate: Mon, 01 Jun 2026 10:00:00 +0200\r\nMessage-ID: <m1@school.test>\r\n\r\n"
           b"Hallo,\r\nbis morgen.\r\n")


async def verifies(resolver: Resolver, signed: bytes) -> bool:
    """dkimpy's verdict, with the key record fetched from NSD first (dkimpy's own lookup is synchronous)."""
    record = await resolver.txt("s2026._domainkey.school.test")
    assert record.ok, record.describe()
    return dkim.verify(signed, dnsfunc=lambda name, timeout=5: record.records[0].encode())


async def test_mail_from_a_domain_with_a_key_is_signed_relaxed_and_verifies_against_nsd(resolver):
    signed = DkimSigner.from_settings(DkimSettings(keys=[SCHOOL_KEY])).sign(MESSAGE, "anna.schmidt@school.test")
    assert signed.startswith(b"DKIM-Signature:") and signed.endswith(MESSAGE)
    tags = signed[:signed.index(MESSAGE)].replace(b"\r\n ", b" ")
    assert b"c=relaxed/relaxed" in tags and b"d=school.test" in tags and b"s=s2026" in tags
    assert await verifies(resolver, signed)
    tampered = signed.replace(b"bis morgen.", b"bis heute.")
    assert not await verifies(resolver, tampered)


async def test_without_a_from_field_the_envelope_sender_decides(resolver):
    bare = b"To: <someone@outside.test>\r\nSubject: ohne From\r\n\r\nHallo.\r\n"
    signer = DkimSigner.from_settings(DkimSettings(keys=[SCHOOL_KEY]))
    assert signing_domain(bare, "Anna.Schmidt@School.Test") == "school.test"
    assert await verifies(resolver, signer.sign(bare, "anna.schmidt@school.test"))
    assert signer.sign(bare, "") == bare  # the null sender (a DSN without From) has no domain


@pytest.mark.parametrize("from_field", [
    b"From: someone@outside.test",  # another domain: not ours to sign
    b"From: anna.schmidt@school.test, someone@outside.test",  # two domains: no author domain
    b"From: anna.schmidt@school.test\r\nFrom: anna.schmidt@school.test",  # two From fields
])
def test_mail_not_from_exactly_one_own_domain_passes_unsigned(from_field):
    raw = from_field + b"\r\nSubject: x\r\n\r\nHallo.\r\n"
    signer = DkimSigner.from_settings(DkimSettings(keys=[SCHOOL_KEY]))
    assert signer.sign(raw, "anna.schmidt@school.test") == raw


def test_listed_headers_are_the_ones_signed():
    signer = DkimSigner.from_settings(DkimSettings(keys=[SCHOOL_KEY], headers=["From", "Subject"]))
    field = signer.sign(MESSAGE, "")[: -len(MESSAGE)].replace(b"\r\n ", b" ")
    assert b"h=from : subject;" in field


def test_a_key_that_cannot_be_read_or_does_not_sign_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read key_file"):
        DkimSigner.from_settings(DkimSettings(keys=[DkimKey("school.test", "s", str(tmp_path / "none"))]))
    garbage = tmp_path / "garbage.private"
    garbage.write_text("not a key\n")
    with pytest.raises(ConfigError, match="does not sign"):
        DkimSigner.from_settings(DkimSettings(keys=[DkimKey("school.test", "s", str(garbage))]))
    with pytest.raises(ConfigError, match="two keys"):
        DkimSettings(keys=[SCHOOL_KEY, SCHOOL_KEY])


def test_no_keys_signs_nothing():
    signer = DkimSigner.from_settings(DkimSettings())
    assert not signer and signer.sign(MESSAGE, "anna.schmidt@school.test") == MESSAGE
