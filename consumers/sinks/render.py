"""Rendering: the stored message plus the edits stages asked for, as the sinks deliver it.

The stored blob is never changed; edits are applied on the way out, in the order recorded.
"""
from __future__ import annotations

import re

from schemas.events import Edit

__all__ = ["render"]

_HEADER_END = re.compile(rb"\r\n\r\n")
_SUBJECT = re.compile(rb"^Subject:[ \t]?", re.IGNORECASE | re.MULTILINE)


def _header_line(name: str, value: str) -> bytes:
    clean = " ".join(value.replace("\r", " ").replace("\n", " ").split())
    return f"{name}: {clean}\r\n".encode("utf-8")


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
    raise ValueError(f"unknown edit kind {edit.kind!r}")


def render(raw: bytes, edits: list[Edit]) -> bytes:
    for edit in edits:
        raw = _apply(raw, edit)
    return raw
