"""Declared charsets to text: known ones, unknown ones, and codecs that are no charsets."""
from __future__ import annotations

import time

import pytest

from pipeline.mail.charsets import decode_text, text_codec


@pytest.mark.parametrize("charset, codec", [
    ("utf-8", "utf-8"), ("ISO-8859-1", "iso8859-1"), ('"windows-1252"', "cp1252"), ("us-ascii", "ascii"),
    ("x-no-such-charset", None), ("", None),
    # codecs Python has that no message may use as a charset
    ("punycode", None), ("idna", None), ("unicode_escape", None), ("raw-unicode-escape", None),
    ("rot13", None), ("base64", None), ("zlib", None), ("hex", None), ("undefined", None),
])
def test_which_charsets_are_used(charset: str, codec: str | None) -> None:
    assert text_codec(charset) == codec


def test_decoding_never_raises_and_says_what_it_used() -> None:
    assert decode_text("Grüße".encode("iso-8859-1"), "iso-8859-1") == ("Grüße", "iso8859-1")
    assert decode_text("Grüße".encode(), "x-unknown") == ("Grüße", "utf-8")
    assert decode_text(b"\xff\xfe\xfd", "utf-8") == ("\ufffd\ufffd\ufffd", "utf-8")
    assert decode_text("Grüße".encode(), "") == ("Grüße", "utf-8")  # unlabelled 8-bit: UTF-8, not ASCII
    assert decode_text(b"a\\u0041", "unicode_escape") == ("a\\u0041", "utf-8")  # no escapes interpreted


def test_a_charset_with_a_quadratic_decoder_is_not_used() -> None:
    data = b"a" * 200_000 + b"-" + b"b" * 50_000
    started = time.process_time()
    text, codec = decode_text(data, "punycode")
    assert codec == "utf-8" and text.startswith("aaa")
    assert time.process_time() - started < 0.5
