"""Rendering: the stored message plus the edits stages asked for, as the sinks deliver it.

The stored blob is never changed; edits are applied on the way out, in the order recorded.

Edit kinds: `add_header` (a new field on top), `subject_tag` (text before the Subject), and
`remove_header`: drop the header fields named `name`; with a `value`, only those whose first word
(the text before the first ";" or space, e.g. the authserv-id of an Authentication-Results field)
equals `value`, case-insensitively. The auth stage uses it to drop forged Authentication-Results
fields that claim the site's own authserv-id (RFC 8601 section 5).
"""
from __future__ import annotations

import re

from schemas.events import Edit

__all__ = ["render"]

_HEADER_END = re.compile(rb"\r\n\r\n")
_SUBJECT = re.compile(rb"^Subject:[ \t]?", re.IGNORECASE | re.MULTILINE)
_FIELD_START = re.compile(rb"^(?=[^ \t\r\n])", re.MULTILINE)
MAX_LINE = 998  # octets per line (RFC 5322 2.1.1), without CRLF


def _header_line(name: str, value: str) -> bytes:
    clean = " ".join(value.replace("\r", " ").replace("\n", " ").split())
    line = f"{name}: {clean}"
    if len(line.encode("utf-8")) > MAX_LINE:  # fold a long structured field after its ";" separators
        line = line.replace("; ", ";\r\n\t")
    return f"{line}\r\n".encode("utf-8")


def _first_word(field_value: bytes) -> bytes:
    return re.split(rb"[;\s]", field_value.strip(), maxsplit=1)[0].lower()


def _remove_header(raw: bytes, name: str, value: str) -> bytes:
    end = _HEADER_END.search(raw)
    head_len = end.start() + 2 if end else len(raw)
    fields = [f for f in _FIELD_START.split(raw[:head_len]) if f]
    wanted, word = name.lower().encode(), value.strip().lower().encode()
    kept = []
    for field in fields:
        field_name, colon, field_value = field.partition(b":")
        if colon and field_name.strip().lower() == wanted and (not word or _first_word(field_value) == word):
            continue
        kept.append(field)
    return b"".join(kept) + raw[head_len:]


def _apply(raw: bytes, edit: Edit) -> bytes:
    if edit.kind == "add_header":
        # new headers go on top, as a content filter on this host would add them
        return _header_line(edit.name, edit.value) + raw
    if edit.kind == "subject_tag":
        end = _HEADER_END.search(raw)
        head_len = end.start() if end else len(raw)
        match = _SUBJECT.search(raw, 0, head_len)
        tag = edit.value.encode("utf-8") + b" "
        if match is None:
            return _header_line("Subject", edit.value) + raw
        return raw[: match.end()] + tag + raw[match.end():]
    if edit.kind == "remove_header":
        return _remove_header(raw, edit.name, edit.value)
    raise ValueError(f"unknown edit kind {edit.kind!r}")


def render(raw: bytes, edits: list[Edit]) -> bytes:
    for edit in edits:
        raw = _apply(raw, edit)
    return raw
