"""The blocklist stage against the real NSD with the test lists of deploy/local/dns/."""
from __future__ import annotations

import hashlib
from email.message import EmailMessage
from pathlib import Path

import pytest

from consumers.stages.blocklist import BlocklistSettings, BlocklistStage
from pipeline.blobstore import FileBlobStore
from pipeline.clients.dnslists import ListSite
from pipeline.settings import ConfigError, Settings
from pipeline.stage import PoisonMessage, StageContext, TemporaryFailure, Work
from pipeline.state.sitelists import SiteLists, parse_entry
from schemas.events import BlobRef, Client, Envelope, Received, Verdict

URIBL = ListSite(zone="multi.uribl.test", codes=["127.0.0.2-127.0.0.3"], weight=1)
RHSBL = ListSite(zone="dbl.rhsbl.test", codes=["127.0.1.2-127.0.1.99"], weight=1)
ZEN = ListSite(zone="zen.dnsbl.test", codes=["127.0.0.2-127.0.0.3"], weight=3)
LISTED_IP = "127.0.1.66"  # zen.dnsbl.test 127.0.0.2
GOOD_IP = "127.0.2.10"
PDF = b"%PDF-1.4 invoice\x00" * 40


def mail(body: str = "Hallo.", *, html: str = "", header_from: str = "max@good.test",
         attachment: bytes = b"") -> bytes:
    message = EmailMessage()
    message["From"] = header_from
    message["To"] = "a@school.test"
    message["Subject"] = "test"
    message.set_content(body)
    if html:
        message.add_alternative(html, subtype="html")
    if attachment:
        message.add_attachment(attachment, maintype="application", subtype="pdf", filename="r.pdf")
    return message.as_bytes()


class Harness:
    def __init__(self, tmp_path: Path, resolver, **settings) -> None:
        self.blobs = FileBlobStore(tmp_path / "blobs")
        self.lists = SiteLists(None)
        options = {"uribl": [URIBL], "rhsbl": [RHSBL], "dnsbl": [ZEN], **settings}
        self.stage = BlocklistStage(BlocklistSettings(**options), StageContext(Settings(), self.blobs),
                                    resolver=resolver, lists=self.lists)

    def block(self, kind: str, value: str, comment: str = "") -> None:
        self.lists.put(parse_entry("block", kind, value, comment))

    def allow(self, kind: str, value: str) -> None:
        self.lists.put(parse_entry("allow", kind, value))

    async def run(self, raw: bytes, *, ip: str = GOOD_IP, mail_from: str = "max@good.test",
                  skipped: list[str] | None = None, listener: str = "smtp"):
        ref = self.blobs.put(raw)
        message = Received(envelope=Envelope(mail_from=mail_from, rcpt_to=["a@school.test"]),
                           client=Client(ip=ip, port=25), blob=ref, skipped_checks=skipped or [], listener=listener)
        return await self.stage.process(Work(message=message))


@pytest.fixture
async def harness(tmp_path: Path, resolver):
    h = Harness(tmp_path, resolver)
    await h.stage.start()
    yield h
    await h.stage.close()


# ---- DNS lists -----------------------------------------------------------------------------------


async def test_link_to_a_uribl_listed_domain_fails_with_the_zone(harness: Harness) -> None:
    outcome = await harness.run(mail(html='<a href="http://www.bad-link.test/login">Ihre Bank</a>'))
    assert outcome.verdict == Verdict.FAIL
    assert outcome.score == 1.0
    assert not outcome.reject and not outcome.quarantine
    assert outcome.details["listed"] == [{"check": "uribl", "zone": "multi.uribl.test", "subject": "bad-link.test",
                                          "codes": ["127.0.0.2"], "weight": 1}]
    assert outcome.details["url_domains"] == ["bad-link.test"]


async def test_grey_code_outside_the_codes_does_not_count(harness: Harness) -> None:
    outcome = await harness.run(mail("see http://grey-link.test/ and http://good.test/"))
    assert outcome.verdict == Verdict.PASS
    assert outcome.details["listed"] == [] and outcome.details["url_domains"] == ["grey-link.test", "good.test"]


async def test_weights_of_several_sites_add_up(tmp_path: Path, resolver) -> None:
    grey = ListSite(zone="multi.uribl.test", codes=["127.0.0.4"], weight=2)
    h = Harness(tmp_path, resolver, uribl=[URIBL, grey], threshold=3)
    await h.stage.start()
    outcome = await h.run(mail("http://bad-link.test/ http://www.grey-link.test/ http://a.bad-link.test/"))
    assert (outcome.verdict, outcome.score) == (Verdict.FAIL, 3.0)
    assert sorted((x["subject"], x["weight"]) for x in outcome.details["listed"]) == [
        ("bad-link.test", 1), ("grey-link.test", 2)]
    only_grey = await h.run(mail("http://grey-link.test/"))
    assert (only_grey.verdict, only_grey.score) == (Verdict.PASS, 2.0)  # under the threshold: a score, no fail


async def test_rhsbl_listed_from_domain_fails(harness: Harness) -> None:
    outcome = await harness.run(mail(header_from="Chef <ceo@spammer.test>"))
    assert outcome.verdict == Verdict.FAIL
    assert [(x["check"], x["zone"], x["subject"]) for x in outcome.details["listed"]] == [
        ("rhsbl", "dbl.rhsbl.test", "spammer.test")]


async def test_clean_message_passes(harness: Harness) -> None:
    outcome = await harness.run(mail("Nothing to see, http://good.test/ only."))
    assert (outcome.verdict, outcome.score, outcome.details["listed"]) == (Verdict.PASS, 0.0, [])


async def test_skipped_dnsbl_at_the_ingress_is_rechecked(harness: Harness) -> None:
    outcome = await harness.run(mail(), ip=LISTED_IP, skipped=["dnsbl"])
    assert outcome.verdict == Verdict.FAIL and outcome.score == 3.0
    assert outcome.details["dnsbl_rechecked"] == LISTED_IP
    assert [(x["check"], x["zone"], x["subject"], x["codes"]) for x in outcome.details["listed"]] == [
        ("dnsbl", "zen.dnsbl.test", LISTED_IP, ["127.0.0.2"])]


async def test_client_ip_is_not_rechecked_when_the_ingress_checked_it(harness: Harness) -> None:
    outcome = await harness.run(mail(), ip=LISTED_IP, skipped=["rhsbl"])
    assert outcome.verdict == Verdict.PASS and outcome.details["dnsbl_rechecked"] == ""


async def test_dns_timeout_is_a_temporary_failure(tmp_path: Path, dead_resolver) -> None:
    h = Harness(tmp_path, dead_resolver)
    await h.stage.start()
    with pytest.raises(TemporaryFailure, match="DNS list lookups failed temporarily"):
        await h.run(mail("http://bad-link.test/"))


async def test_dns_timeout_with_on_error_skip_is_a_skip(tmp_path: Path, dead_resolver) -> None:
    h = Harness(tmp_path, dead_resolver, on_error="skip")
    await h.stage.start()
    outcome = await h.run(mail("http://bad-link.test/"))
    assert outcome.verdict == Verdict.SKIP
    assert outcome.details["skipped"] and "tempfail" in outcome.details["skipped"][0]


# ---- the site's lists ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind, value, kwargs, reason", [
    ("domain", "evil.test", {"mail_from": "x@mail.evil.test"},
     "site block list: sender x@mail.evil.test (entry domain evil.test): campaign"),
    ("address", "x@good.test", {"mail_from": "X@Good.Test"}, "site block list: sender x@good.test: campaign"),
    ("cidr", "127.0.2.0/24", {}, "site block list: client address 127.0.2.10 (entry cidr 127.0.2.0/24): campaign"),
    ("domain", "phish.test", {"raw": mail('<a href="https://login.phish.test/">x</a>')},
     "site block list: link to login.phish.test (entry domain phish.test): campaign"),
    ("domain", "fake-bank.test", {"raw": mail(header_from="bank@fake-bank.test")},
     "site block list: From domain fake-bank.test: campaign"),
    ("sha256", hashlib.sha256(PDF).hexdigest(), {"raw": mail(attachment=PDF)},
     f"site block list: attachment sha256 {hashlib.sha256(PDF).hexdigest()}: campaign"),
])
async def test_site_block_list_hits_reject(harness: Harness, kind: str, value: str, kwargs: dict, reason: str) -> None:
    harness.block(kind, value, "campaign")
    raw = kwargs.pop("raw", mail())
    outcome = await harness.run(raw, **kwargs)
    assert outcome.reject == reason
    assert outcome.verdict == Verdict.FAIL
    assert outcome.details["site_block"]["value"] == parse_entry("block", kind, value).value


async def test_a_digest_quoting_a_blocked_link_is_not_refused(harness: Harness) -> None:
    harness.block("domain", "phish.test", "campaign")
    raw = mail("Quarantine: 1 new message\n  Subject: visit www.phish.test/login")
    assert (await harness.run(raw, mail_from="")).reject  # from outside: refused
    outcome = await harness.run(raw, mail_from="", ip="127.0.0.1", listener="digest")
    assert outcome.reject == "" and outcome.details["site_block"] is None
    assert outcome.details["url_domains"] == ["phish.test"]  # still looked at


async def test_allow_list_skips_the_dns_lookups(tmp_path: Path, dead_resolver) -> None:
    h = Harness(tmp_path, dead_resolver)  # every lookup would time out: the allow entry must avoid them
    h.allow("domain", "partner.test")
    await h.stage.start()
    outcome = await h.run(mail("http://bad-link.test/"), mail_from="news@partner.test")
    assert outcome.verdict == Verdict.PASS
    assert outcome.details["allowlisted"]["value"] == "partner.test"
    assert outcome.details["listed"] == []


async def test_block_list_wins_over_the_allow_list(harness: Harness) -> None:
    harness.allow("cidr", "127.0.2.0/24")
    harness.block("domain", "phish.test")
    outcome = await harness.run(mail("http://phish.test/"))
    assert outcome.reject.startswith("site block list: link to phish.test")


async def test_lists_not_replayed_yet_is_a_temporary_failure(tmp_path: Path, resolver) -> None:
    from pipeline.state.sitelists import LISTS
    from pipeline.tables import MemoryLog, MemoryTransport

    memory = MemoryLog(LISTS)
    memory.available = False
    h = Harness(tmp_path, resolver)
    h.stage.lists = h.lists = SiteLists(MemoryTransport(memory), retry_every=0.01)
    await h.lists.start(timeout=0.05)
    with pytest.raises(TemporaryFailure, match="not replayed"):
        await h.run(mail())
    await h.lists.close()


async def test_missing_blob_is_poison(harness: Harness) -> None:
    message = Received(envelope=Envelope(mail_from="", rcpt_to=["a@school.test"]), client=Client(ip=GOOD_IP, port=25),
                       blob=BlobRef(sha256="0" * 64, size=10))
    with pytest.raises(PoisonMessage) as poison:
        await harness.stage.process(Work(message=message))
    assert poison.value.reason == "blob_missing"


async def test_deeply_nested_and_huge_messages_are_bounded(harness: Harness) -> None:
    deep = b"From: x@a.test\r\nContent-Type: multipart/mixed; boundary=b0\r\n\r\n"
    for i in range(1, 200):
        deep += f"--b{i - 1}\r\nContent-Type: multipart/mixed; boundary=b{i}\r\n\r\n".encode()
    deep += b"--b199\r\nContent-Type: text/plain\r\n\r\nhttp://bad-link.test/\r\n"
    try:
        outcome = await harness.run(deep)
    except PoisonMessage as poison:
        assert poison.reason == "too_deep"
    else:
        assert outcome.verdict in (Verdict.FAIL, Verdict.PASS)
    many = b"From: x@a.test\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" + \
        b"".join(b"--b\r\nContent-Type: text/plain\r\n\r\nhttp://p%d.test/\r\n" % i for i in range(10_000)) + b"--b--\r\n"
    outcome = await harness.run(many)
    assert "max_parts" in outcome.details["truncated"] and "max_domains" in outcome.details["truncated"]
    assert len(outcome.details["url_domains"]) == 50


def test_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"stages\.blocklist\.uribl\[0\]\.zone: required"):
        BlocklistSettings(uribl=[ListSite()])
    with pytest.raises(ConfigError, match=r"stages\.blocklist\.on_error"):
        BlocklistSettings(on_error="ignore")
    with pytest.raises(ConfigError, match=r"stages\.blocklist\.max_domains"):
        BlocklistSettings(max_domains=0)


@pytest.mark.parametrize("key", ["max_parts", "max_text_bytes", "public_suffix_list"])
def test_keys_that_moved_to_the_message_section_are_named(key: str) -> None:
    from pipeline.config import parse_section

    with pytest.raises(ConfigError, match=rf"stages\.blocklist\.{key}: no longer a key here: "):
        parse_section(BlocklistSettings, {key: 1}, "stages.blocklist")
