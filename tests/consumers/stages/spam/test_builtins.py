"""The built-in tests on crafted messages: each fires where it should and stays quiet on ordinary mail."""
from __future__ import annotations

import logging

import pytest

from consumers.stages.spam.builtins import BUILTINS, builtin
from consumers.stages.spam.scan import Scan
from tests.consumers.stages.spam.scanning import context, fired, message, rules

HTML = "text/html; charset=utf-8"
PLAIN = message()


def check(name: str, raw: bytes, *args, **client) -> bool:
    return BUILTINS[name](Scan(context(raw, **client)), *args)


def alternative(plain: str, html: str) -> bytes:
    body = (f"--b\r\nContent-Type: text/plain\r\n\r\n{plain}\r\n--b\r\nContent-Type: text/html\r\n\r\n{html}\r\n"
            "--b--\r\n")
    return message(body=body, content_type='multipart/alternative; boundary="b"')


def test_html_only_and_little_text():
    short = message(body="<p>Hi</p><img src='http://x.test/a.png'>", content_type=HTML)
    assert check("html_only", short) and check("html_little_text", short, 200)
    assert check("html_images_little_text", short, 400)
    long_html = message(body="<p>" + "Words of a long letter. " * 30 + "</p>", content_type=HTML)
    assert check("html_only", long_html) and not check("html_little_text", long_html, 200)
    assert not check("html_images_little_text", long_html, 400)
    both = alternative("Hi", "<p>Hi</p>")
    assert not check("html_only", both) and not check("html_little_text", both, 200)
    assert not check("html_only", PLAIN)


def test_link_text_that_shows_another_domain():
    phish = message(body='<a href="http://login.evil.test/x">https://www.mybank.example/login</a>', content_type=HTML)
    assert check("link_text_mismatch", phish)
    same = message(body='<a href="https://login.mybank.example/x">www.mybank.example</a>', content_type=HTML)
    words = message(body='<a href="http://evil.test/">Click here for mybank</a>', content_type=HTML)
    to_ip = message(body='<a href="http://192.0.2.1/">www.mybank.example</a>', content_type=HTML)
    assert not check("link_text_mismatch", same) and not check("link_text_mismatch", words)
    assert check("link_text_mismatch", to_ip) and check("link_to_ip", to_ip) and not check("link_to_ip", same)


def test_alternative_parts_that_say_different_things():
    same = alternative("the quarterly report is ready for review today",
                       "<p>The quarterly report is ready for review today</p>")
    other = alternative("the quarterly report is ready for review today",
                        "<p>cheap watches buy online discount luxury brands shipping</p>")
    assert not check("alternative_parts_differ", same, 0.5) and check("alternative_parts_differ", other, 0.5)


@pytest.mark.parametrize(("date", "name", "args", "expected"), [
    ("Mon, 02 Jun 2025 11:58:00 +0200", "date_invalid", (), False),
    ("yesterday at noon", "date_invalid", (), True),
    ("Mon, 02 Jun 2025 11:58:00", "date_invalid", (), False),  # no zone: UTC, as for -0000
    ("Tue, 03 Jun 2025 12:00:00 +0000", "date_future", (12,), True),
    ("Mon, 02 Jun 2025 20:00:00 +0000", "date_future", (12,), False),
    ("Tue, 27 May 2025 10:00:00 +0000", "date_past", (4,), True),
    ("Sat, 31 May 2025 10:00:00 +0000", "date_past", (4,), False),
])
def test_dates_are_compared_with_the_time_of_receipt(date, name, args, expected):
    assert check(name, message(date=date), *args) is expected


def test_the_time_of_receipt_is_the_top_received_date_when_there_is_one():
    raw = message(date="Mon, 02 Jan 2006 10:00:00 +0000",
                  headers="Received: from a by b; Tue, 03 Jan 2006 09:00:00 +0000\n")
    assert not check("date_past", raw, 4)  # received in 2006, though the gateway's event says 2025
    assert check("date_past", message(date="Mon, 02 Jan 2006 10:00:00 +0000"), 4)


def test_message_id_and_bulk_headers():
    assert check("message_id_malformed", message(message_id="<no-at-sign>"))
    assert check("message_id_malformed", message(message_id="a@b.test"))
    assert not check("message_id_malformed", PLAIN) and not check("message_id_malformed", message(message_id=""))
    assert check("bulk_without_unsubscribe", message(headers="Precedence: bulk\n"))
    assert not check("bulk_without_unsubscribe", message(headers="Precedence: list\nList-Id: <l.school.test>\n"))
    assert not check("bulk_without_unsubscribe", PLAIN)


def test_needless_base64_in_fields_and_text_parts():
    assert check("needless_encoding", message(subject="=?utf-8?B?QnV5IG5vdw==?="), "Subject")
    assert not check("needless_encoding", message(subject="=?utf-8?B?R3LDvMOfZQ==?="), "Subject")  # Grüße
    b64 = message(body="SGVsbG8gTWF4LCB0aGlzIGlzIHBsYWluIEFTQ0lJIHRleHQu\r\n",
                  headers="Content-Transfer-Encoding: base64\n")
    assert check("base64_ascii_text", b64) and not check("base64_ascii_text", PLAIN)


def test_from_display_names_recipients_and_authors():
    assert check("from_name_has_address", message(sender='"service@mybank.example" <x@evil.test>'))
    assert not check("from_name_has_address", message(sender='"erika@good.test" <erika@good.test>'))
    assert check("undisclosed_recipients", message(to="undisclosed-recipients:;"))
    assert check("undisclosed_recipients", message(to=""))
    assert not check("undisclosed_recipients", PLAIN)
    sorted_to = ", ".join(f"{n}@school.test" for n in ("anna", "ben", "carl", "dora", "emil"))
    assert check("recipients_sorted", message(to=sorted_to), 5)
    assert not check("recipients_sorted", message(to="emil@school.test, " + sorted_to[:-18]), 5)
    assert check("no_author_domain", message(headers="From: other@elsewhere.test\n"))  # two From fields
    assert not check("no_author_domain", PLAIN)
    own = message(sender="max.mustermann@school.test")
    assert check("from_is_recipient", own)
    assert not check("from_is_recipient", own, authenticated_as="max")
    assert check("header_malformed", b"From: a@b.test\r\nthis is no field\r\nSubject: x\r\n\r\nbody")
    assert not check("header_malformed", PLAIN)
    assert not check("header_malformed", b"From erika@good.test Mon Jun  2 10:00:00 2025\n" + PLAIN)


def test_capitals_obfuscated_and_split_words():
    assert check("subject_caps", message(subject="BUY CHEAP WATCHES NOW"), 10, 0.9)
    assert not check("subject_caps", message(subject="OK"), 10, 0.9)
    assert not check("subject_caps", message(subject="Meeting NOTES for Monday"), 10, 0.9)
    shouting = message(body="THIS IS THE BEST OFFER YOU WILL EVER SEE. " * 10)
    assert check("body_caps", shouting, 200, 0.75) and not check("body_caps", PLAIN, 200, 0.5)
    leet = message(body="Get v1agra and c1alis, also ca$h.")
    assert check("obfuscated_words", leet, 2) and not check("obfuscated_words", leet, 4)
    ordinary = message(body="Windows 10 on 3 PCs, see RFC 5322, mp3 files, user@host.test, x86 and 4x4. "
                            "Signature: iQEVAwUBPW5AmaHbXyzZsAb3AQH id Kh1XhaeR moo!moo!moo")
    assert not check("obfuscated_words", ordinary, 1)
    assert check("split_words", message(body="Play at our c.a.s.i.n.o tonight"), 1)
    assert check("split_words", message(body="V-I-A-G-R-A for you"), 1)
    assert not check("split_words", message(body="e.g. the U.S.A. and i.e. a-b-c"), 1)


def test_charsets_empty_bodies_and_image_spam():
    assert check("charset_unknown", message(content_type="text/plain; charset=x-no-such-charset"))
    assert not check("charset_unknown", PLAIN)
    assert check("body_empty", message(body=""))
    assert not check("body_empty", PLAIN)
    image = ("--b\r\nContent-Type: text/plain\r\n\r\nsee\r\n--b\r\nContent-Type: image/gif\r\n"
             "Content-Transfer-Encoding: base64\r\n\r\nR0lGODlhAQABAAAAACw=\r\n--b--\r\n")
    raw = message(body=image, content_type='multipart/mixed; boundary="b"')
    assert check("images_little_text", raw, 100) and not check("images_little_text", PLAIN, 100)


@builtin("_test_fails")
def _fails(scan: Scan) -> bool:
    raise RuntimeError("a heuristic with a bug")


def test_a_built_in_that_raises_is_logged_and_counts_as_not_fired(tmp_path, caplog):
    ruleset = rules(tmp_path, "eval BROKEN _test_fails()\nbody OTHER /Hello/\n")
    with caplog.at_level(logging.WARNING):
        assert fired(ruleset, context(PLAIN)) == ["OTHER"]
    assert "spam rule BROKEN: built-in _fails failed on message 01J0000000000000000000SPAM" in caplog.text
