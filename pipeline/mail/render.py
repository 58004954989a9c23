"""Rendering: the stored message plus the edits stages asked for, as the sinks deliver it.

The stored blob is never changed; edits are applied on the way out, in the order recorded.

Edit kinds: `add_header` (a new field on top), `subject_tag` (text before the Subject), and
`remove_header`: drop the header fields named `name`; with a `value`, only those whose first word
(the text before the first ";" or space, e.g. the authserv-id of an Authentication-Results field)
equals `value`, case-insensitively. The auth stage uses it to drop forged Authentication-Results
fields that claim the site's own authserv-id (RFC 8601 section 5).

`replace_part` splices a short text/plain notice into the raw bytes in place of one MIME part (found
by its part number and checked by the sha256 of its raw body); every other byte stays as it was. A
part that is the body of a (possibly encapsulated) message keeps that message's header fields, only
its Content-* fields are replaced. When the part cannot be found the edit fails loudly rather than
deliver the part it was meant to hold back.

`envelope_sender` changes no byte: it names the MAIL FROM of the copy (`envelope_sender_of`: the
expand stage's group owner for member bounces); the sinks send with it, the bounce service sends
the DSN to it. The first such edit of a copy counts.
"""
from __future__ import annotations

import binascii
import hashlib
import re

from pipeline.mail.mime import Part, leaf_at, walk
from schemas.events import Edit, Routed

__all__ = ["render", "notice_part", "PartNotFound", "envelope_sender_of"]

# generous: the stage that asked for the edit has walked the message with its own (lower) caps
RENDER_MAX_DEPTH = 64
RENDER_MAX_PARTS = 100_000
_CONTENT_FIELD = re.compile(rb"^content-[a-z0-9-]*[ \t]*:", re.IGNORECASE)


class PartNotFound(ValueError):
    """A replace_part edit names a part the message does not have (or whose bytes changed)."""

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
    if edit.kind == "replace_part":
        return _replace_part(raw, edit)
    if edit.kind == "envelope_sender":
        return raw  # the envelope, not the content: see envelope_sender_of
    raise ValueError(f"unknown edit kind {edit.kind!r}")


def envelope_sender_of(routed: Routed) -> str:
    """The MAIL FROM of a routed copy: its first `envelope_sender` edit's address, else the message's."""
    return next((e.value for e in routed.edits if e.kind == "envelope_sender"), routed.message.envelope.mail_from)


def notice_part(text: str) -> tuple[bytes, bytes]:
    """(Content-* header fields, body) of an inline text/plain part with `text` (CRLF lines)."""
    lines = text.replace("\r\n", "\n").split("\n")
    data = "\n".join(lines).encode("utf-8")
    if data.isascii() and all(len(line) <= 998 for line in lines):
        head = b"Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n"
        body = data.replace(b"\n", b"\r\n")
    else:
        head = b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n"
        body = binascii.b2a_qp(data, istext=True).replace(b"\n", b"\r\n")
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    return head + b"Content-Disposition: inline\r\n", body


def _find_part(raw: bytes, edit: Edit) -> Part:
    parts = walk(raw, max_depth=RENDER_MAX_DEPTH, max_parts=RENDER_MAX_PARTS)
    part = leaf_at(parts, edit.part)
    if part is not None and hashlib.sha256(part.body(raw)).hexdigest() == edit.sha256:
        return part
    # the numbering moved (an earlier edit added a part?): the same bytes elsewhere are the part
    same = [p for p in parts if p.is_leaf and hashlib.sha256(p.body(raw)).hexdigest() == edit.sha256]
    if same:
        return same[0]
    raise PartNotFound(f"part {edit.part} with body sha256 {edit.sha256} is not in the message")


def _without_content_fields(header: bytes) -> bytes:
    """The header block without its Content-* fields (continuation lines included)."""
    kept: list[bytes] = []
    dropping = False
    for line in header.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        dropping = bool(_CONTENT_FIELD.match(line))
        if not dropping:
            kept.append(line)
    block = b"".join(kept)
    if block and not block.endswith(b"\n"):
        block += b"\r\n"
    return block


def _replace_part(raw: bytes, edit: Edit) -> bytes:
    part = _find_part(raw, edit)
    fields, body = notice_part(edit.value)
    if part.message_root:  # keep the message's own header fields, replace its Content-* ones
        header = _without_content_fields(raw[part.start:part.header_end])
        body = body.removesuffix(b"\r\n") if part.end < len(raw) else body
        return raw[:part.start] + header + fields + b"\r\n" + body + raw[part.end:]
    # the line break before the next delimiter belongs to the delimiter: the notice ends without one
    return raw[:part.start] + fields + b"\r\n" + body.removesuffix(b"\r\n") + raw[part.end:]


def render(raw: bytes, edits: list[Edit]) -> bytes:
    for edit in edits:
        raw = _apply(raw, edit)
    return raw
