"""The digest mail: both languages, both parts, every held value escaped, one token per entry and action."""
from __future__ import annotations

import email
import re
from email.header import decode_header, make_header
from email.policy import default
from urllib.parse import unquote

from consumers.services.digest.compose import compose_digest, shown
from pipeline.blobstore import FileBlobStore
from pipeline.links import read_link_token
from tests.consumers.services.digest.samples import KEY, LENA, quarantined, state_with

BASE = "https://quarantaene.school.test"
NOW = 1_780_000_000.0  # before the entries expire (they are from 2026-12-03 plus 30 days)


def _compose(tmp_path, *subjects: str, language: str = "de", stage: str = "spam"):
    blobs = FileBlobStore(tmp_path)
    state = state_with(*(quarantined(blobs, [LENA], subject=s, stage=stage) for s in subjects))
    entries = state.undigested(LENA)
    mail = compose_digest(LENA, entries, language=language, key=KEY, base_url=BASE, sender="postmaster@school.test",
                          from_name="Poststelle Schule", hostname="mx.school.test")
    return mail, email.message_from_bytes(mail.raw, policy=default), entries


def _parts(message) -> tuple[str, str]:
    plain = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    return plain, html


def test_german_digest_headers_and_two_alternative_parts(tmp_path) -> None:
    mail, message, entries = _compose(tmp_path, "Gewinn", "Rechnung", "Angebot")
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    raw_subject = re.search(rb"^Subject: (.*)$", mail.raw, re.M).group(1)
    assert raw_subject.isascii() and b"=?utf-8?" in raw_subject  # RFC 2047
    assert str(make_header(decode_header(raw_subject.decode()))) == "Quarantäne: 3 neue Nachrichten"
    assert message["From"].addresses[0].addr_spec == "postmaster@school.test"
    assert message["From"].addresses[0].display_name == "Poststelle Schule"
    assert message["To"] == LENA and message["Auto-Submitted"] == "auto-generated"
    assert message["Message-ID"] == f"<{mail.message_id_header}>" and mail.message_id_header.endswith("@mx.school.test")
    assert email.utils.parsedate_to_datetime(message["Date"]) is not None and message["Content-Language"] == "de"
    plain, html = _parts(message)
    assert "zurückgehalten" in plain and "Zustellen" in plain and "Gewinn" in plain and "Rechnung" in html
    assert "Spam-Wert: 9.5" in plain and "Absender: Eve <eve@spam.test>" in plain
    assert f"{BASE}/login" in plain and f'href="{BASE}/login"' in html
    assert "<img" not in html and "<script" not in html and "http" not in html.replace(BASE, "")


def test_english_digest_and_one_message(tmp_path) -> None:
    _, message, _ = _compose(tmp_path, "prize", language="en")
    assert message["Subject"] == "Quarantine: 1 new message"
    plain, html = _parts(message)
    assert "were held" in plain and "Deliver and learn as wanted" in html and "Always allow this sender" in plain


def test_a_hostile_subject_is_text_in_both_parts(tmp_path) -> None:
    hostile = '<script>alert(1)</script><a href="http://evil.test/">click</a>\u202e\r\nFake: line'
    _, message, _ = _compose(tmp_path, hostile)
    plain, html = _parts(message)
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'href="http://evil.test/"' not in html and "&lt;a href=&quot;http://evil.test/&quot;&gt;" in html
    assert "\u202e" not in plain and "\u202e" not in html  # no bidi override reaches the reader
    assert "\nFake: line" not in plain  # no line of its own in the list


def test_each_link_names_exactly_one_entry_and_one_action(tmp_path) -> None:
    _, message, entries = _compose(tmp_path, "one", "two")
    plain, html = _parts(message)
    urls = re.findall(re.escape(BASE) + r"/l/(\S+)", plain)
    tokens = [read_link_token(KEY, unquote(u), now=NOW) for u in urls]
    by_entry = {e.id: sorted(t.action for t in tokens if t.entry == e.id) for e in entries}
    assert by_entry == {e.id: ["allow_sender", "delete", "release", "release_learn"] for e in entries}
    assert len(tokens) == len({(t.entry, t.action) for t in tokens}) == 8
    assert all(t.expires == email.utils.parsedate_to_datetime("Sat, 02 Jan 2027 10:00:00 +0000").timestamp()
               for t in tokens)  # with the entry, 30 days after it was held
    assert set(re.findall(re.escape(BASE) + r'/l/([^"]+)"', html)) == set(urls)  # the same links in the HTML


def test_an_entry_only_an_admin_may_release_has_no_release_link(tmp_path) -> None:
    _, message, entries = _compose(tmp_path, "invoice", stage="virus", language="en")  # a scan limit
    assert entries[0].needs_approval
    plain, _ = _parts(message)
    actions = {read_link_token(KEY, u, now=NOW).action for u in re.findall(re.escape(BASE) + r"/l/(\S+)", plain)}
    assert actions == {"open", "allow_sender", "delete"} and "Only an administrator" in plain


def test_shown_cuts_and_cleans() -> None:
    assert shown("a\tb\x00c\u200fd") == "a b\ufffdc\ufffdd"
    assert len(shown("x" * 500)) == 200 and shown("x" * 500).endswith("…")
