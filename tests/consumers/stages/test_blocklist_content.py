"""Link hosts, From domains and attachment digests as the blocklist stage reads them from messages."""
from __future__ import annotations

import base64
import hashlib
import quopri
from email.message import EmailMessage
from pathlib import Path

import pytest

from consumers.stages.blocklist_content import (
    DEFAULT_PSL_PATH,
    PublicSuffixList,
    extract_facts,
    host_of_url,
    hosts_in_html,
    hosts_in_text,
    load_public_suffix_list,
)


def raw_message(body: bytes, *, content_type: str = "text/plain; charset=utf-8", cte: str = "7bit",
                sender: str = "Max <max@Example.ORG>") -> bytes:
    return (f"From: {sender}\r\nTo: a@school.test\r\nSubject: t\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: {content_type}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n").encode() + body


# ---- hosts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("url, host", [
    ("http://www.Bad-Link.test/x?y=1", "www.bad-link.test"),
    ("https://user:pw@bad-link.test:8443/", "bad-link.test"),
    ("www.bad-link.test/path", "www.bad-link.test"),
    ("http://bad-link.test.", "bad-link.test"),
    ("http://bücher.test/", "xn--bcher-kva.test"),  # IDNA
    ("http://192.0.2.7/x", ""),  # an IP literal: nothing to look up
    ("http://[2001:db8::1]/", ""),
    ("http://localhost/", ""),  # no dot
    ("http://bad-link.test:99999/", "bad-link.test"),  # a port that cannot be: the host still counts
    ("http://-bad-.test/", ""),  # not a DNS name
])
def test_host_of_url_normalises_or_drops(url: str, host: str) -> None:
    assert host_of_url(url) == host


def test_bare_urls_in_plain_text_with_trailing_punctuation() -> None:
    text = "Klick hier: https://bad-link.test/login. Oder (www.other.test), nicht mailto:x@y.test"
    assert hosts_in_text(text) == ["bad-link.test", "www.other.test"]


def test_html_links_attributes_entities_and_text() -> None:
    html = ('<html><body><a HREF="http://www.bad-link.test/a">Bank</a>'
            '<img src="//img.cdn.test/p.gif"><form action="https://post.test/x"></form>'
            '<a href=www.unquoted.test>y</a><a href="relative/path.html">z</a>'
            '<p>Visit http&#58;//entity.test/ or www.text-link.test</p></body></html>')
    assert hosts_in_html(html) == ["www.bad-link.test", "img.cdn.test", "post.test", "www.unquoted.test",
                                   "entity.test", "www.text-link.test"]


# ---- bodies --------------------------------------------------------------------------------------


def test_quoted_printable_soft_breaks_inside_a_url_are_joined() -> None:
    body = ("Bitte hier anmelden: https://www.bad-link.test/" + "x" * 90 + " danke\r\n").encode()
    encoded = quopri.encodestring(body)
    assert b"=\n" in encoded or b"=\r\n" in encoded  # the URL is split over lines
    facts = extract_facts(raw_message(encoded, cte="quoted-printable"))
    assert facts.url_hosts == ["www.bad-link.test"]
    assert facts.url_domains == ["bad-link.test"]


def test_base64_html_in_latin1_is_decoded() -> None:
    html = '<p>Grüße</p><a href="http://spam.bad-link.test/">x</a>'.encode("iso-8859-1")
    raw = raw_message(base64.encodebytes(html), content_type="text/html; charset=iso-8859-1", cte="base64")
    facts = extract_facts(raw)
    assert facts.url_hosts == ["spam.bad-link.test"]
    assert facts.url_domains == ["bad-link.test"]


def test_unknown_charset_is_read_as_utf8() -> None:
    raw = raw_message(b"see http://bad-link.test/", content_type="text/plain; charset=x-no-such-charset")
    assert extract_facts(raw).url_hosts == ["bad-link.test"]


def test_multipart_alternative_and_attachment_digest() -> None:
    message = EmailMessage()
    message["From"] = "Eve <eve@Spammer.test>, other@second.test"
    message["To"] = "a@school.test"
    message.set_content("plain http://one.test/")
    message.add_alternative('<a href="http://two.test/">x</a>', subtype="html")
    pdf = b"%PDF-1.4 not really\x00\x01" * 50
    message.add_attachment(pdf, maintype="application", subtype="pdf", filename="rechnung.pdf")
    facts = extract_facts(message.as_bytes())
    assert facts.url_hosts == ["one.test", "two.test"]
    assert facts.from_domains == ["spammer.test", "second.test"]
    assert facts.attachment_sha256 == [hashlib.sha256(pdf).hexdigest()]


def test_attachment_inside_a_forwarded_message_counts() -> None:
    inner = EmailMessage()
    inner["From"] = "x@inner.test"
    inner.set_content("inner body http://inner-link.test/")
    inner.add_attachment(b"payload-bytes", maintype="application", subtype="octet-stream", filename="a.bin")
    outer = EmailMessage()
    outer["From"] = "y@outer.test"
    outer.set_content("see attached")
    outer.add_attachment(inner)
    facts = extract_facts(outer.as_bytes())
    assert hashlib.sha256(b"payload-bytes").hexdigest() in facts.attachment_sha256
    assert "inner-link.test" in facts.url_hosts


def test_domains_are_bounded_and_the_bound_is_reported() -> None:
    body = " ".join(f"http://host{i}.spam{i}.test/" for i in range(200)).encode()
    facts = extract_facts(raw_message(body), max_domains=50)
    assert len(facts.url_hosts) == 50
    assert facts.truncated == ["domains"]


def test_parts_and_text_are_bounded() -> None:
    message = EmailMessage()
    message["From"] = "x@a.test"
    message.set_content("first http://first.test/ " + "x" * 5000)
    for i in range(30):
        message.add_attachment(f"part {i} http://p{i}.test/", subtype="plain", disposition="inline")
    facts = extract_facts(message.as_bytes(), max_parts=10, max_text_bytes=1000)
    assert facts.parts == 11
    assert "parts" in facts.truncated and "text" in facts.truncated
    assert facts.url_hosts == ["first.test"]


def test_malformed_from_and_garbage_do_not_raise() -> None:
    facts = extract_facts(b"From: <<<@@>>>\r\n\r\n\xff\xfe http://ok.test/ \x00")
    assert facts.from_domains == []
    assert facts.url_hosts == ["ok.test"]


# ---- registrable domains -------------------------------------------------------------------------


def test_registrable_domains_with_the_public_suffix_rules() -> None:
    psl = PublicSuffixList.from_text("// comment\nuk\nco.uk\n*.ck\n!www.ck\n")
    assert psl.registrable("www.bad-link.test") == "bad-link.test"  # default rule "*"
    assert psl.registrable("a.b.example.co.uk") == "example.co.uk"
    assert psl.registrable("x.shop.ck") == "x.shop.ck"  # *.ck: shop.ck is a suffix
    assert psl.registrable("a.www.ck") == "www.ck"  # the exception
    assert psl.registrable("co.uk") == ""


@pytest.mark.skipif(not Path(DEFAULT_PSL_PATH).exists(), reason="Debian's publicsuffix package not installed")
def test_the_system_public_suffix_list_is_used() -> None:
    psl = load_public_suffix_list(DEFAULT_PSL_PATH)
    assert psl.registrable("mail.example.co.uk") == "example.co.uk"
    assert psl.registrable("foo.bar.github.io") == "bar.github.io"
    facts = extract_facts(raw_message(b"http://www.phish.co.uk/x"), psl=psl)
    assert facts.url_domains == ["phish.co.uk"]


def test_a_missing_suffix_list_falls_back_to_the_default_rule(tmp_path: Path) -> None:
    psl = load_public_suffix_list(str(tmp_path / "missing.dat"))
    assert psl.registrable("www.example.co.uk") == "co.uk"
