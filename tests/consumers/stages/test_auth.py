"""The auth stage end to end in process: a real blob store, the real NSD, and the sink's renderer."""
from __future__ import annotations

import dataclasses
from email.parser import BytesHeaderParser

import pytest

from consumers.stages.auth import AuthSettings, AuthStage
from pipeline.blobstore import FileBlobStore
from pipeline.mail.render import render
from pipeline.settings import ConfigError, DnsSettings, IngressSettings, Settings
from pipeline.stage import PoisonMessage, StageContext, Work
from schemas.events import BlobRef, Client, Envelope, Received, Verdict
from tests.consumers.stages.authn.fixtures import message, sign
from tests.servers import NSD_HOST


@pytest.fixture
def make_stage(nsd, tmp_path):
    blobs = FileBlobStore(tmp_path / "blobs")

    def make(**options) -> AuthStage:
        settings = dataclasses.replace(
            Settings(), dns=DnsSettings(nameserver=NSD_HOST, port=nsd.port),
            ingress=IngressSettings(hostname="mx.school.test", relay_networks=["127.0.5.0/24"]))
        return AuthStage(AuthSettings(**options), StageContext(settings=settings, blobs=blobs))

    make.blobs = blobs
    return make


def work_for(blobs: FileBlobStore, raw: bytes, ip: str = "127.0.2.10", mail_from: str = "lehrer@good.test",
             authenticated_as: str = "", listener: str = "smtp") -> Work:
    received = Received(envelope=Envelope(mail_from=mail_from, rcpt_to=["max.mustermann@school.test"]),
                        client=Client(ip=ip, port=40000, helo="mx.good.test", authenticated_as=authenticated_as),
                        blob=blobs.put(raw), message_id="01J0000000000000000000TEST", listener=listener)
    return Work(message=received)


def results_header(raw: bytes, outcome) -> list[str]:
    delivered = render(raw, outcome.edits)
    return [str(v) for v in BytesHeaderParser().parsebytes(delivered).get_all("Authentication-Results") or []]


async def test_a_good_message_passes_and_gets_one_header(make_stage):
    stage = make_stage()
    raw = sign(message())
    outcome = await stage.process(work_for(make_stage.blobs, raw))
    assert (outcome.verdict, outcome.reject, outcome.quarantine) == (Verdict.PASS, "", "")
    (header,) = results_header(raw, outcome)
    assert header.startswith("mx.school.test; spf=pass smtp.mailfrom=good.test; dkim=pass header.d=good.test")
    assert header.endswith("dmarc=pass (p=reject dis=none) header.from=good.test")
    details = outcome.details
    assert details["spf"]["result"] == "pass" and details["dkim"][0]["result"] == "pass"
    assert details["dmarc"] == {**details["dmarc"], "result": "pass", "spf_aligned": True, "dkim_aligned": True}
    assert (details["enforced"], details["action"], details["dmarc_quarantine"]) == (True, "none", False)


async def test_dmarc_reject_failure_rejects_with_the_reason(make_stage):
    stage = make_stage()
    raw = sign(message()).replace(b"bis morgen.", b"bis heute.")  # tampered: dkim=fail
    outcome = await stage.process(work_for(make_stage.blobs, raw, ip="127.0.2.20"))  # spf=fail
    assert outcome.verdict == Verdict.FAIL and outcome.quarantine == ""
    assert outcome.reject.startswith("DMARC policy of good.test is reject: neither SPF (fail for good.test)")
    (header,) = results_header(raw, outcome)
    assert "spf=fail" in header and "dkim=fail" in header and "dmarc=fail (p=reject dis=reject)" in header
    assert outcome.details["action"] == "reject"


async def test_dmarc_reject_can_be_configured_to_quarantine(make_stage):
    outcome = await make_stage(dmarc_reject="quarantine").process(
        work_for(make_stage.blobs, message(), ip="127.0.2.20"))
    assert outcome.reject == "" and outcome.quarantine.startswith("DMARC policy of good.test is reject")


async def test_p_quarantine_only_flags_for_the_spam_stage(make_stage):
    outcome = await make_stage().process(
        work_for(make_stage.blobs, message("info@quarantine.test"), ip="127.0.2.10", mail_from="info@quarantine.test"))
    assert (outcome.reject, outcome.quarantine, outcome.verdict) == ("", "", Verdict.FAIL)
    assert outcome.details["dmarc_quarantine"] is True and outcome.details["action"] == "quarantine_flag"


@pytest.mark.parametrize(("ip", "user", "because"), [
    ("127.0.2.20", "lena.mueller@school.test", "authenticated as lena.mueller@school.test"),
    ("127.0.5.9", "", "trusted network (127.0.5.9)"),  # ingress.relay_networks
])
async def test_authenticated_and_trusted_clients_are_labelled_not_enforced(make_stage, ip, user, because):
    raw = message()
    outcome = await make_stage().process(work_for(make_stage.blobs, raw, ip=ip, authenticated_as=user))
    assert (outcome.reject, outcome.quarantine) == ("", "")
    assert (outcome.details["enforced"], outcome.details["not_enforced_because"]) == (False, because)
    (header,) = results_header(raw, outcome)
    assert "dmarc=fail" in header
    assert (f"auth=pass smtp.auth={user};" in header) == bool(user)


@pytest.mark.parametrize("listener", ["digest", "dsn"])
async def test_mail_the_gateway_writes_itself_is_labelled_not_enforced(make_stage, listener):
    outcome = await make_stage().process(work_for(make_stage.blobs, message(), ip="127.0.2.20", listener=listener))
    assert (outcome.reject, outcome.quarantine) == ("", "") and outcome.details["dmarc"]["result"] == "fail"
    assert outcome.details["not_enforced_because"] == f"written by the gateway itself ({listener})"


async def test_forged_results_with_our_authserv_id_are_removed_others_kept(make_stage):
    forged = ("Authentication-Results: MX.School.Test; dkim=pass header.d=good.test; dmarc=pass\r\n"
              "Authentication-Results: mx.ext.test; spf=pass smtp.mailfrom=ext.test\r\n")
    raw = message("a@ext.test", extra=forged)
    outcome = await make_stage().process(work_for(make_stage.blobs, raw, ip="127.0.2.20", mail_from="a@ext.test"))
    headers = results_header(raw, outcome)
    assert len(headers) == 2 and headers[1].startswith("mx.ext.test;")
    assert headers[0] == "mx.school.test; spf=none smtp.mailfrom=ext.test; dkim=none; dmarc=none header.from=ext.test"
    kept = await make_stage(remove_forged_results=False).process(work_for(make_stage.blobs, raw, ip="127.0.2.20"))
    assert len(results_header(raw, kept)) == 3


async def test_the_authserv_id_setting(make_stage):
    outcome = await make_stage(authserv_id="gw.school.test").process(work_for(make_stage.blobs, message()))
    assert results_header(message(), outcome)[0].startswith("gw.school.test; ")


async def test_dns_trouble_is_temperror_and_the_message_goes_on(make_stage):
    raw = message("someone@example.org")  # NSD refuses example.org: every lookup fails temporarily
    outcome = await make_stage().process(work_for(make_stage.blobs, raw, mail_from="someone@example.org"))
    assert (outcome.reject, outcome.quarantine, outcome.verdict) == ("", "", Verdict.PASS)
    assert (outcome.details["spf"]["result"], outcome.details["dmarc"]["result"]) == ("temperror", "temperror")


async def test_a_message_without_from_is_dmarc_permerror_not_a_crash(make_stage):
    raw = b"Subject: no from\r\n\r\nbody\r\n"
    outcome = await make_stage().process(work_for(make_stage.blobs, raw, ip="127.0.2.20"))
    assert outcome.details["dmarc"]["result"] == "permerror" and outcome.reject == ""


async def test_a_missing_blob_is_a_poison_message(make_stage):
    work = work_for(make_stage.blobs, message())
    work = Work(message=dataclasses.replace(work.message, blob=BlobRef(sha256="0" * 64, size=1)))
    with pytest.raises(PoisonMessage) as raised:
        await make_stage().process(work)
    assert raised.value.reason == "blob_missing"


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="dmarc_reject"):
        AuthSettings(dmarc_reject="bounce")
    with pytest.raises(ConfigError, match="trusted_networks"):
        AuthSettings(trusted_networks=["not-a-net"])


# ---- the same From at submission and in DMARC ----------------------------------------------------

SAME_FROM = [
    ("From: Lehrer <lehrer@good.test>", "pass", "good.test"),
    ("From: =?utf-8?q?Lehrer_=28Schule=29?= <lehrer@good.test>", "pass", "good.test"),
    ("From: lehrer@good.test (Lehrer) <boss@ext.test>", "header_from_invalid", ""),  # which one is it?
    ("From: =?utf-8?b?bGVocmVyQGdvb2QudGVzdA==?=", "header_from_invalid", ""),  # hidden in an encoded word
    ("From: lehrer@good.test\r\n\tboss@ext.test", "header_from_invalid", ""),
    ("From: lehrer@good.test\r\nFrom: lehrer@good.test", "pass", ""),  # readable, but no single author
    ("From: lehrer@good.test, boss@ext.test", "sender_not_owned", ""),
]


@pytest.mark.parametrize(("from_lines", "login", "dmarc_domain"), SAME_FROM)
async def test_the_sender_login_check_and_dmarc_read_the_same_from(make_stage, from_lines, login, dmarc_domain):
    from ingress.checks import CheckContext, CheckServices
    from ingress.checks.sender_login import SenderLoginCheck, SenderLoginSettings
    from pipeline.mail.message import parse_message
    from pipeline.mail.trace import received_header

    data = message().replace(b"From: Lehrer <lehrer@good.test>", from_lines.encode())
    ctx = CheckContext(session_id="s", client_ip="127.0.2.10", listener="submission", authenticated_as="lehrer",
                       auth_addresses=frozenset({"lehrer@good.test"}))
    decision = await SenderLoginCheck(SenderLoginSettings(), CheckServices()).data(ctx, data)
    assert (decision.reason_code or "pass") == login
    stored = received_header(helo="client", client_ip="127.0.2.10", reverse_name="", by_host="mx.school.test",
                             protocol="ESMTPSA", message_id="m1", recipients=["max.mustermann@school.test"]) + data
    assert parse_message(stored).authors == ctx.message_header(data).authors  # one parse, one answer

    outcome = await make_stage().process(work_for(make_stage.blobs, stored, ip="127.0.2.20"))
    dmarc = outcome.details["dmarc"]
    assert dmarc["from_domain"] == dmarc_domain
    if login == "header_from_invalid":
        assert dmarc["result"] == "permerror" and dmarc["reason"] in decision.detail
