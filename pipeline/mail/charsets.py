"""Bytes in a declared MIME charset to text, whatever the message declares.

A message names the charset of each text part and of each RFC 2047 encoded word, and it may name
anything. Python's codec registry knows charsets, but also codecs that are no charsets at all
(``punycode`` and ``idna``, whose decoders take quadratic time on long input; ``unicode_escape``,
which interprets backslashes). Those, and names Python does not know, are decoded as UTF-8 with
replacement characters, as are bytes a known charset cannot decode: decoding never raises, and
`decoded_as` says which codec was used, so a rule can tell a declared charset from a fallback.
"""
from __future__ import annotations

import codecs
from functools import lru_cache

__all__ = ["text_codec", "decode_text", "FALLBACK"]

FALLBACK = "utf-8"
# codecs Python offers for bytes.decode that are not character sets a message may use
_NOT_CHARSETS = frozenset({"punycode", "idna", "unicode-escape", "raw-unicode-escape", "undefined", "mbcs",
                           "oem", "palmos"})


@lru_cache(maxsize=256)
def text_codec(charset: str) -> str | None:
    """The Python codec for a declared MIME charset, or None when it is unknown or no charset."""
    name = charset.strip().strip("\"'").lower()
    if not name:
        return None
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError):
        return None
    if info.name.replace("_", "-") in _NOT_CHARSETS or not getattr(info, "_is_text_encoding", True):
        return None
    return info.name


def decode_text(data: bytes, charset: str, default: str = "us-ascii") -> tuple[str, str]:
    """(text, decoded_as): `data` decoded in `charset` (`default` when none is declared).

    Bytes the charset cannot decode become U+FFFD; an unknown charset is read as UTF-8.
    """
    codec = text_codec(charset or default)
    if codec is None:
        return data.decode(FALLBACK, "replace"), FALLBACK
    if codec == "ascii" and not data.isascii():
        codec = FALLBACK  # 8-bit text labelled us-ascii (or not labelled): UTF-8 is the likely truth
    try:
        return data.decode(codec, "replace"), codec
    except (UnicodeError, LookupError, TypeError, ValueError):  # a decoder that ignores "replace"
        return data.decode(FALLBACK, "replace"), FALLBACK
