"""The parsed message: texts, links, attachments, the caps, and hostile input."""
from __future__ import annotations

import base64
import hashlib
import quopri
import time
from email.message import EmailMessage

import pytest

from pipeline.mail.message import parse_message
from pipeline.settings import MessageSettings
from tests.pipeline.mail.test_mime import many_parts, nested_message


def raw_message(body: bytes, *, content_type: str = "text/plain; charset=utf-8", cte: str = "7bit",
                sender: str = "Max <max@Example.ORG>", extra: str = "") -> bytes:
    return (f"From: {sender}\r\nTo: a@school.test\r\nSubject: t\r\nMIME-Version: 1.0\r\n{extra}"
            f"Content-Type: {content_type}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n").encode() + body


def hosts(raw: bytes, caps: MessageSettings | None = None) -> list[str]:
    return list(parse_message(raw, caps).link_hosts)


# ---- text parts --------------------------------------------------------------------------------


def test_quoted_printable_soft_breaks_inside_a_url_are_joined() -> None:
    body = ("Bitte hier anmelden: https://www.bad-link.test/" + "x" * 90 + " danke\r\n").encode()
    encoded = quopri.encodestring(body)
    assert b"=\n" in encoded or b"=\r\n" in encoded  # the URL is split over lines
    parsed = parse_message(raw_message(encoded, cte="quoted-printable"))
    assert [(l.host, l.domain, l.source, l.part) for l in parsed.links] == [
        ("www.bad-link.test", "bad-link.test", "text", "1")]
    (text,) = parsed.texts
    assert text.text == body.decode() and text.transfer_encoding == "quoted-printable"


def test_base64_html_in_latin1_is_decoded_and_rendered() -> None:
    markup = '<p>Grüße</p><script>var x = "http://script.test/";</script><a href="http://spam.bad-link.test/">hier</a>'
    raw = raw_message(base64.encodebytes(markup.encode("iso-8859-1")),
                      content_type="text/html; charset=iso-8859-1", cte="base64")
    (text,) = parse_message(raw).texts
    assert (text.content_type, text.charset, text.decoded_as, text.is_html) == ("text/html", "iso-8859-1",
                                                                                "iso8859-1", True)
    assert text.text == "Grüße\nhier" and text.markup == markup
    assert hosts(raw) == ["spam.bad-link.test"]
    assert parse_message(raw).links[0].text == "hier"


def test_unknown_charsets_are_read_as_utf8() -> None:
    raw = raw_message("Grüße http://bad-link.test/".encode(), content_type="text/plain; charset=x-no-such-charset")
    (text,) = parse_message(raw).texts
    assert (text.text, text.charset, text.decoded_as) == ("Grüße http://bad-link.test/", "x-no-such-charset", "utf-8")
    assert hosts(raw) == ["bad-link.test"]


def test_multipart_alternative_from_domains_and_attachment_digest() -> None:
    message = EmailMessage()
    message["From"] = "Eve <eve@Spammer.test>, other@second.test"
    message["To"] = "a@school.test"
    message.set_content("plain http://one.test/")
    message.add_alternative('<a href="http://two.test/">x</a>', subtype="html")
    pdf = b"%PDF-1.4 not really\x00\x01" * 50
    message.add_attachment(pdf, maintype="application", subtype="pdf", filename="rechnung.pdf")
    parsed = parse_message(message.as_bytes())
    assert parsed.link_hosts == ("one.test", "two.test")
    assert parsed.authors.domains == ("spammer.test", "second.test")
    (attachment,) = parsed.attachments
    assert (attachment.path, attachment.filename, attachment.content_type, attachment.disposition) == (
        "2", "rechnung.pdf", "application/pdf", "attachment")
    assert (attachment.size, attachment.sha256) == (len(pdf), hashlib.sha256(pdf).hexdigest())
    assert [(t.path, t.content_type) for t in parsed.texts] == [("1.1", "text/plain"), ("1.2", "text/html")]


def test_attachments_inside_a_forwarded_message_count() -> None:
    inner = EmailMessage()
    inner["From"] = "x@inner.test"
    inner.set_content("inner body http://inner-link.test/")
    inner.add_attachment(b"payload-bytes", maintype="application", subtype="octet-stream", filename="a.bin")
    outer = EmailMessage()
    outer["From"] = "y@outer.test"
    outer.set_content("see attached")
    outer.add_attachment(inner)
    parsed = parse_message(outer.as_bytes())
    assert [(a.path, a.sha256) for a in parsed.attachments] == [("2.2", hashlib.sha256(b"payload-bytes").hexdigest())]
    assert "inner-link.test" in parsed.link_hosts
    assert parsed.authors.domains == ("outer.test",)  # the From of the message, not of the attachment


def test_every_leaf_is_a_text_part_or_an_attachment() -> None:
    message = EmailMessage()
    message["From"] = "x@a.test"
    message.set_content("body")
    message.add_attachment("notes http://in-a-file.test/", subtype="plain", filename="notes.txt")
    message.add_attachment("BEGIN:VCALENDAR", subtype="calendar", disposition="inline")
    message.add_attachment("<p>as a file</p>", subtype="html", disposition="attachment")
    parsed = parse_message(message.as_bytes())
    assert [(t.path, t.content_type) for t in parsed.texts] == [("1", "text/plain"), ("3", "text/calendar")]
    assert [(a.path, a.filename) for a in parsed.attachments] == [("2", "notes.txt"), ("4", "")]
    assert parsed.link_hosts == ()  # text in files is not searched for links


def test_header_and_body_come_from_the_same_bytes() -> None:
    raw = raw_message(b"x", extra="Subject: zweites\r\n")
    parsed = parse_message(raw)
    assert parsed.header.subject == "t" and [f.value for f in parsed.header.all("subject")] == ["t", "zweites"]
    assert parsed.raw is raw and parsed.parts[0].body_start == parsed.header.body_start


def test_without_content_the_view_stops_after_the_header_and_the_parts() -> None:
    from pipeline.mail.message import ContentNotParsed, with_content

    raw = raw_message(b"see http://x.test/")
    structure = parse_message(raw, content=False)
    assert structure.header.subject == "t" and len(structure.parts) == 1 and structure.caps == ()
    for name in ("texts", "links", "attachments"):
        with pytest.raises(ContentNotParsed):
            getattr(structure, name)
    full = with_content(structure)
    assert full == parse_message(raw) and full.header is structure.header and full.link_hosts == ("x.test",)
    assert with_content(full) is full


# ---- caps --------------------------------------------------------------------------------------


def test_links_are_capped_and_the_cap_is_reported() -> None:
    body = " ".join(f"http://host{i}.spam{i}.test/" for i in range(200)).encode()
    parsed = parse_message(raw_message(body), MessageSettings(max_links=50))
    assert len(parsed.links) == 50 and parsed.caps_hit == ("max_links",)
    assert parsed.link_hosts[0] == "host0.spam0.test"


def test_parts_and_text_are_capped() -> None:
    message = EmailMessage()
    message["From"] = "x@a.test"
    message.set_content("first http://first.test/ " + "x" * 5000)
    for i in range(30):
        message.add_attachment(f"part {i} http://p{i}.test/", subtype="plain", disposition="inline")
    parsed = parse_message(message.as_bytes(), MessageSettings(max_parts=10, max_text_bytes=1000))
    assert len(parsed.parts) == 10
    assert parsed.caps_hit == ("max_parts", "max_text_bytes")
    assert parsed.hit("max_parts").detail == "more than 10 MIME parts"
    assert parsed.link_hosts == ("first.test",)
    first, *rest = parsed.texts
    assert first.truncated and first.size == 1000 and all(t.text == "" and t.truncated for t in rest)


def test_a_message_within_the_caps_hits_none() -> None:
    assert parse_message(raw_message(b"hello http://x.test/")).caps == ()


# ---- hostile input -----------------------------------------------------------------------------

HOSTILE = {
    "200 levels of nesting": nested_message(200),
    "10,000 parts": many_parts(10_000),
    "a huge header": b"X-Junk: " + b"a" * 5_000_000 + b"\r\nFrom: a@x.test\r\n\r\nbody",
    "20,000 header fields": b"".join(b"X-%d: v\r\n" % i for i in range(20_000)) + b"\r\nbody",
    "bad base64": raw_message(b"!!!*** not base64 \x00\xff" * 100_000, cte="base64"),
    "base64 of one char": raw_message(b"Q", cte="base64"),
    "unknown charsets": raw_message("Grüße".encode() * 100_000, content_type="text/html; charset=x-unknown"),
    "a punycode charset": raw_message(b"a" * 500_000 + b"-b", content_type="text/plain; charset=punycode"),
    "NULs everywhere": b"From: a\x00@x.test\r\nSub\x00ject: \x00\r\n\r\n\x00" * 1000,
    "no header at all": b"\r\n" + b"http://x.test/ " * 10,
    "empty": b"",
    "only a header": b"From: a@x.test",
    "HTML that stalls html.parser": raw_message(b"<a " * 700_000, content_type="text/html"),
    "multipart without boundary": b"Content-Type: multipart/mixed\r\n\r\n--x\r\n\r\nhi",
    "unterminated parts": b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n' * 3000,
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_messages_parse_in_bounded_time_without_raising(name: str) -> None:
    started = time.process_time()
    parsed = parse_message(HOSTILE[name])
    assert time.process_time() - started < 5.0
    assert parsed.raw is HOSTILE[name]
    assert len(parsed.parts) <= 1000 and len(parsed.links) <= 1000
    assert sum(t.size for t in parsed.texts) <= 2_000_000


def test_hostile_messages_record_the_caps_they_hit() -> None:
    assert parse_message(HOSTILE["200 levels of nesting"]).caps_hit == ("max_depth",)
    assert parse_message(HOSTILE["10,000 parts"]).caps_hit == ("max_parts",)
    huge = parse_message(HOSTILE["a huge header"])
    assert huge.caps_hit == ("max_header_bytes",) and not huge.authors.readable
    assert parse_message(HOSTILE["20,000 header fields"]).caps_hit == ("max_header_fields",)
