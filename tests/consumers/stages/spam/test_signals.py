"""The signals of the earlier checks: ingress notes, the blocklist, auth and attachment results, Bayes."""
from __future__ import annotations

import dataclasses

import pytest

from consumers.stages.spam.builtins import BUILTINS
from consumers.stages.spam.scan import Scan
from schemas.stages.attachment import AttachmentDetails, HeldPartDetails
from schemas.stages.auth import AuthDetails, DkimDetails, DmarcDetails, SpfDetails
from schemas.stages.blocklist import BlocklistDetails, Listing, SiteListHit
from tests.consumers.stages.spam.scanning import context, message, result

RAW = message()


def signal(name: str, *args, history=(), bayes=None, **client) -> bool:
    return BUILTINS[name](Scan(context(RAW, history=history, bayes=bayes, **client)), *args)


def blocklist(*listings: Listing):
    return (result("blocklist", dataclasses.asdict(BlocklistDetails(score=1, threshold=5, listed=list(listings)))),)


def auth(spf="pass", dkim=("pass",), dmarc="pass", dkim_aligned=True, quarantine=False):
    details = AuthDetails(authserv_id="mx.school.test", spf=SpfDetails(result=spf, domain="good.test", identity="mailfrom"),
                          dkim=[DkimDetails(result=r, domain="good.test") for r in dkim],
                          dmarc=DmarcDetails(result=dmarc, from_domain="good.test", dkim_aligned=dkim_aligned),
                          dmarc_quarantine=quarantine)
    return (result("auth", dataclasses.asdict(details)),)


def test_the_sites_allow_list_by_what_matched():
    def allowed(source: str):
        hit = SiteListHit(list="allow", kind="cidr", value="192.0.2.0/24", subject="192.0.2.7", source=source)
        return (result("blocklist", dataclasses.asdict(BlocklistDetails(score=0, threshold=5, allowlisted=hit))),)

    assert signal("site_allowlisted", "client_ip", history=allowed("client_ip"))
    assert not signal("site_allowlisted", "sender", history=allowed("client_ip"))
    assert signal("site_allowlisted", "sender", history=allowed("sender"))
    assert not signal("site_allowlisted", "client_ip", history=blocklist()) and not signal("site_allowlisted", "sender")


def test_dns_lists_from_ingress_notes_and_the_blocklist_stage():
    assert signal("dnsbl_listed", checks={"dnsbl": "score=2"})
    assert not signal("dnsbl_listed", checks={"dnsbl": "skipped_tempfail"}) and not signal("dnsbl_listed")
    assert signal("dnsbl_listed", history=blocklist(Listing(check="dnsbl", zone="zen.test", subject="198.51.100.7")))
    assert signal("rhsbl_listed", checks={"rhsbl": "score=1"})
    assert signal("rhsbl_listed", history=blocklist(Listing(check="rhsbl", zone="dbl.test", subject="good.test")))
    uribl = blocklist(Listing(check="uribl", zone="uribl.test", subject="bad-link.test"))
    assert signal("uribl_listed", history=uribl) and not signal("rhsbl_listed", history=uribl)
    assert signal("listed_in", "uribl", "uribl.test", history=uribl)
    assert not signal("listed_in", "uribl", "other.test", history=uribl)


@pytest.mark.parametrize(("name", "args", "history", "expected"), [
    ("spf_result", ("fail",), auth(spf="fail"), True),
    ("spf_result", ("fail",), auth(spf="softfail"), False),
    ("spf_result", ("none",), (), False),  # the auth stage did not run: unknown, not none
    ("dkim_result", ("pass",), auth(dkim=("fail", "pass")), True),
    ("dkim_result", ("fail",), auth(dkim=("pass",)), False),
    ("dkim_result", ("none",), auth(dkim=()), True),
    ("dkim_result", ("none",), auth(dkim=("pass",)), False),
    ("dkim_aligned", (), auth(dkim_aligned=True), True),
    ("dkim_aligned", (), auth(dkim_aligned=False), False),
    ("dmarc_result", ("fail",), auth(dmarc="fail"), True),
    ("dmarc_result", ("pass",), auth(dmarc="none"), False),
    ("dmarc_quarantine", (), auth(dmarc="fail", quarantine=True), True),
    ("dmarc_quarantine", (), auth(dmarc="fail"), False),
])
def test_spf_dkim_and_dmarc_from_the_auth_result(name, args, history, expected):
    assert signal(name, *args, history=history) is expected


def test_the_client_fcrdns_reverse_names_and_helo():
    assert signal("fcrdns_fail", checks={"fcrdns": "fail"}) and not signal("fcrdns_fail", checks={"fcrdns": "pass"})
    public = "81.2.69.142"  # a global address (documentation ranges such as 198.51.100.0/24 are not)
    assert signal("rdns_none", ip=public)  # no name, FCrDNS not configured
    assert not signal("rdns_none", ip=public, reverse_name="mx.good.test")
    assert not signal("rdns_none", ip=public, checks={"fcrdns": "pass"}) and not signal("rdns_none", ip="10.1.2.3")
    assert not signal("rdns_none", ip=public, authenticated_as="max") and not signal("rdns_none")
    assert signal("rdns_dynamic", ip="198.51.100.7", reverse_name="198-51-100-7.pool.isp.example")
    assert signal("rdns_dynamic", ip="198.51.100.7", reverse_name="dsl-cust12.dyn.isp.example")
    assert not signal("rdns_dynamic", ip="198.51.100.7", reverse_name="mail.dynamic-solutions.example")
    assert not signal("rdns_dynamic", reverse_name="mx01.good.test")
    assert signal("helo_is_address", ip=public, helo="[81.2.69.142]") and not signal("helo_is_address", ip=public)
    assert signal("helo_not_fqdn", ip=public, helo="PC-0815") and not signal("helo_not_fqdn", ip=public)
    assert not signal("helo_not_fqdn", ip=public, helo="localhost", authenticated_as="max")


def test_greylisting_relay_and_authentication():
    assert signal("greylist", "passed_after_retry", checks={"greylist": "passed_after_retry"})
    assert not signal("greylist", "passed_after_retry", checks={"greylist": "passed"})
    assert signal("authenticated", authenticated_as="max") and not signal("authenticated")
    assert signal("authenticated", checks={"relay": "authenticated"})
    assert signal("trusted_network", checks={"relay": "trusted_network"}) and not signal("trusted_network")


def test_attachments_held_by_the_attachment_stage():
    held = AttachmentDetails(parts=3, named=1, held=[HeldPartDetails(
        part="2", filename="invoice.pdf.exe", content_type="application/octet-stream",
        reasons=["blocked_extension: .exe", "double_extension: .pdf.exe"])])
    history = (result("attachment", dataclasses.asdict(held)),)
    assert signal("attachment_held", "", history=history) and signal("attachment_held", "double_extension",
                                                                     history=history)
    assert not signal("attachment_held", "control_character", history=history)
    nothing = (result("attachment", dataclasses.asdict(AttachmentDetails(parts=1))),)
    assert not signal("attachment_held", "", history=nothing) and not signal("attachment_held", "")


@pytest.mark.parametrize(("bayes", "band", "expected"), [
    (None, (0.0, 0.01), False), (0.0, (0.0, 0.01), True), (0.01, (0.0, 0.01), False), (0.01, (0.01, 0.05), True),
    (0.5, (0.4, 0.6), True), (0.995, (0.99, 1.0), True), (1.0, (0.99, 1.0), True), (1.0, (0.999, 1.0), True),
    (0.995, (0.999, 1.0), False),
])
def test_bayes_bands(bayes, band, expected):
    assert signal("bayes_between", *band, bayes=bayes) is expected
