"""A byte-level MIME walker: every part of a raw message with its offsets, type and decoded names.

`walk(raw)` returns the parts in document order without copying or re-serializing anything: each
`Part` records where its header starts, where its body starts and ends in `raw`, its content type,
Content-Disposition, transfer encoding and file names. Names are decoded the way mail clients show
them: RFC 2231 parameters (``filename*=utf-8''...``, continuations ``filename*0*=``) and RFC 2047
encoded-words (also inside quoted strings, which is not standard but common). Both the
Content-Disposition ``filename`` and the Content-Type ``name`` are kept, as clients use either.

It descends into ``multipart/*`` (boundary delimiter lines, RFC 2046 §5.1.1: the line break before a
delimiter belongs to the delimiter) and into ``message/rfc822`` / ``message/global`` bodies that are
not transfer-encoded. Nesting deeper than `max_depth` or more than `max_parts` parts stop the walk
there, so time and memory stay bounded whatever the input: `walk` raises `MimeLimitExceeded` with a
precise reason, `walk_within` returns the parts found up to the cap and the cap it hit.

Part paths follow IMAP (RFC 3501 §6.4.5): the children of the top multipart are "1", "2", ...; a
single-part message is "1"; the parts of an encapsulated message at "2" are "2.1", "2.2" (its
single body "2.1"). Only leaves (`Part.is_leaf`) carry content; their paths are unique.

The stdlib parser is used only to read a part's header block (never to write anything), and only its
first `MAX_ENTITY_HEADER_BYTES`: Content-* fields further down in a huge header block are not seen
(the part's `defects` say so), so a 25 MB header costs no more than a 256 KiB one.
"""
from __future__ import annotations

import binascii
import dataclasses
import email.header
import email.utils
import re
from dataclasses import dataclass, field
from email.errors import HeaderParseError
from email.message import Message
from email.parser import HeaderParser
from email.policy import compat32

from pipeline.mail.charsets import decode_text

__all__ = [
    "Part",
    "MimeLimitExceeded",
    "walk",
    "walk_within",
    "header_section",
    "leaf_at",
    "decode_body",
    "decode_name",
    "decode_words",
    "decode_header_bytes",
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_PARTS",
]

DEFAULT_MAX_DEPTH = 20
DEFAULT_MAX_PARTS = 1000
MAX_ENTITY_HEADER_BYTES = 262_144
MESSAGE_TYPES = ("message/rfc822", "message/global")
IDENTITY_ENCODINGS = ("", "7bit", "8bit", "binary")

_MAX_NEAR_MISSES = 256
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
_HEADER_PARSER = HeaderParser(policy=compat32)


class MimeLimitExceeded(Exception):
    """The message nests deeper or has more parts than the walker may look at."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason  # "too_deep" | "too_many_parts"
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Part:
    """One MIME entity of the raw message, located by byte offsets into it."""

    path: str  # IMAP-style part number; "" for the top multipart
    depth: int  # 0 for the message itself; +1 per multipart or message/rfc822 level
    start: int  # offset of the first header byte
    header_end: int  # end of the last header field (before the blank line)
    body_start: int  # first body byte
    end: int  # one past the last body byte (the line break before a delimiter is excluded)
    content_type: str  # lower-case type/subtype
    disposition: str = ""  # lower-case, e.g. "attachment", "inline", or ""
    transfer_encoding: str = ""  # lower-case Content-Transfer-Encoding
    filename: str = ""  # Content-Disposition filename, decoded
    name: str = ""  # Content-Type name, decoded
    charset: str = ""  # Content-Type charset parameter, lower case ("" when none)
    kind: str = "leaf"  # "leaf" | "multipart" | "message" (an encapsulated message we descended into)
    message_root: bool = False  # the top entity of a message (its header block is a message header)
    defects: tuple[str, ...] = field(default_factory=tuple)

    @property
    def is_leaf(self) -> bool:
        return self.kind == "leaf"

    @property
    def names(self) -> tuple[str, ...]:
        """The distinct non-empty file names of the part (filename first)."""
        return tuple(dict.fromkeys(n for n in (self.filename, self.name) if n))

    def body(self, raw: bytes) -> bytes:
        return raw[self.body_start:self.end]


# ---- header fields -----------------------------------------------------------------------------


def decode_header_bytes(block: bytes) -> str:
    """Header bytes as text: UTF-8 (RFC 6532) when they are, else Latin-1 (every byte a character)."""
    try:
        return block.decode("utf-8")  # RFC 6532 raw UTF-8
    except UnicodeDecodeError:
        return block.decode("latin-1")


def decode_words(text: str) -> str:
    """RFC 2047 encoded-words in `text` decoded; text without them is returned as is."""
    if "=?" not in text:
        return text
    try:
        chunks = email.header.decode_header(text)
    except (HeaderParseError, ValueError, binascii.Error):
        return text
    out: list[str] = []
    for chunk, charset in chunks:
        if isinstance(chunk, str):
            out.append(chunk)
            continue
        out.append(decode_text(chunk, charset or "", default="utf-8")[0])
    return "".join(out)


def decode_name(value: object) -> str:
    """A file name parameter as a client shows it: RFC 2231 collapsed, RFC 2047 decoded."""
    if value is None:
        return ""
    if isinstance(value, tuple):
        text = email.utils.collapse_rfc2231_value(value, errors="replace")
    else:
        text = email.utils.unquote(str(value))
    return decode_words(text)


def _param(headers: Message, name: str, header: str) -> str:
    try:
        return decode_name(headers.get_param(name, header=header))
    except (ValueError, LookupError, HeaderParseError, TypeError):
        return ""


def header_section(raw: bytes, start: int = 0, end: int | None = None) -> tuple[int, int]:
    """(header_end, body_start) of the entity occupying raw[start:end]: the first empty line ends
    the header section (header_end is past the last field's line break)."""
    end = len(raw) if end is None else end
    if raw.startswith(b"\r\n", start) and start + 2 <= end:
        return start, start + 2
    if raw.startswith(b"\n", start) and start + 1 <= end:
        return start, start + 1
    blank = _BLANK_LINE.search(raw, start, end)
    if blank is None:
        return end, end
    first_break = 2 if raw[blank.start():blank.start() + 1] == b"\r" else 1
    return blank.start() + first_break, blank.end()


# ---- multipart bodies --------------------------------------------------------------------------


def _delimiter_start(raw: bytes, i: int, body_start: int) -> int:
    """Where the delimiter at `i` begins: the line break before it belongs to it (RFC 2046)."""
    if i >= body_start + 2 and raw[i - 2:i] == b"\r\n":
        return i - 2
    if i > body_start and raw[i - 1:i] == b"\n":
        return i - 1
    return i


def _delimiter_line(raw: bytes, i: int, after: int, body_start: int, end: int) -> tuple[int, int, bool] | None:
    """(delimiter_start, line_end, closing) when the marker at raw[i:after] starts a delimiter line."""
    if i != body_start and raw[i - 1:i] != b"\n":
        return None
    newline = raw.find(b"\n", after, end)
    line_end = end if newline < 0 else newline + 1
    tail = raw[after:line_end].rstrip(b"\r\n")
    closing = tail.startswith(b"--")
    if (tail[2:] if closing else tail).strip(b" \t"):
        return None  # a longer boundary, or text that merely starts like one
    return _delimiter_start(raw, i, body_start), line_end, closing


def _delimiters_by_regex(raw: bytes, pos: int, body_start: int, end: int, boundary: bytes):
    """As `_delimiters`, matching whole delimiter lines in C: for bodies full of near-misses."""
    pattern = re.compile(rb"^--" + re.escape(boundary) + rb"(--)?[ \t]*\r?$", re.MULTILINE)
    for match in pattern.finditer(raw, pos, end):
        line_end = match.end() + 1 if raw[match.end():match.end() + 1] == b"\n" else match.end()
        closing = match.group(1) is not None
        yield _delimiter_start(raw, match.start(), body_start), line_end, closing
        if closing:
            return


def _delimiters(raw: bytes, body_start: int, end: int, boundary: bytes):
    """(delimiter_start, line_end, closing) for each boundary delimiter line in raw[body_start:end].

    `bytes.find` for the marker is the fast path; after `_MAX_NEAR_MISSES` hits that are no
    delimiter (text that merely looks like one), the rest is matched by a regex, so a hostile body
    costs no Python-level work per line.
    """
    marker = b"--" + boundary
    pos, misses = body_start, 0
    while True:
        i = raw.find(marker, pos, end)
        if i < 0:
            return
        if misses > _MAX_NEAR_MISSES:
            yield from _delimiters_by_regex(raw, i - (i > body_start), body_start, end, boundary)
            return
        found = _delimiter_line(raw, i, i + len(marker), body_start, end)
        if found is None:
            misses += 1
            pos = i + len(marker)
            continue
        yield found
        if found[2]:
            return
        pos = found[1]


def _children(raw: bytes, body_start: int, end: int, boundary: bytes, limit: int) -> list[tuple[int, int]]:
    """(start, end) of each body part between the delimiters; the last runs to `end` if unclosed.

    Stops after `limit` + 1 parts (the caller then knows there are too many).
    """
    spans: list[tuple[int, int]] = []
    open_at: int | None = None
    for delimiter_start, line_end, closing in _delimiters(raw, body_start, end, boundary):
        if open_at is not None:
            spans.append((open_at, max(open_at, delimiter_start)))
            if len(spans) > limit:
                return spans
        open_at = None if closing else line_end
    if open_at is not None:
        spans.append((open_at, end))
    return spans


# ---- the walk ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    start: int
    end: int
    path: str
    depth: int
    message_root: bool
    default_type: str = "text/plain"


def _child_path(parent: str, index: int) -> str:
    return f"{parent}.{index}" if parent else str(index)


def _entity(raw: bytes, item: _Pending) -> tuple[Part, bytes]:
    """The Part at `item` (kind still "leaf") and its multipart boundary (b"" when none)."""
    header_end, body_start = header_section(raw, item.start, item.end)
    defects: list[str] = []
    read_to = header_end
    if header_end - item.start > MAX_ENTITY_HEADER_BYTES:
        read_to = item.start + MAX_ENTITY_HEADER_BYTES
        defects.append("header_over_cap")
    headers = _HEADER_PARSER.parsestr(decode_header_bytes(raw[item.start:read_to]))
    content_type = headers.get_content_type() if headers.get("content-type") else item.default_type
    disposition = (headers.get("content-disposition") or "").split(";", 1)[0].strip().lower()
    encoding = str(headers.get("content-transfer-encoding") or "").strip().lower()
    boundary = b""
    if content_type.startswith("multipart/"):
        value = _param(headers, "boundary", "content-type")
        if value:
            boundary = value.encode("utf-8", "replace")
        else:
            defects.append("multipart_without_boundary")
    part = Part(path=item.path, depth=item.depth, start=item.start, header_end=header_end,
                body_start=body_start, end=item.end, content_type=content_type, disposition=disposition,
                transfer_encoding=encoding,
                filename=_param(headers, "filename", "content-disposition"),
                name=_param(headers, "name", "content-type"), message_root=item.message_root,
                charset=_param(headers, "charset", "content-type").strip().lower(),
                defects=tuple(defects))
    return part, boundary


def walk_within(raw: bytes, *, max_depth: int = DEFAULT_MAX_DEPTH,
                max_parts: int = DEFAULT_MAX_PARTS) -> tuple[list[Part], MimeLimitExceeded | None]:
    """Every MIME entity of `raw` in document order up to the caps, and the first cap hit (or None).

    An entity nested deeper than `max_depth` is left out (with all it holds); after `max_parts`
    entities the walk stops. What was found up to there keeps its true paths.
    """
    parts: list[Part] = []
    limit: MimeLimitExceeded | None = None
    stack = [_Pending(0, len(raw), "", 0, True)]
    while stack:
        item = stack.pop()
        if item.depth > max_depth:
            limit = limit or MimeLimitExceeded("too_deep", f"nested deeper than {max_depth} levels")
            continue
        if len(parts) >= max_parts:
            limit = limit or MimeLimitExceeded("too_many_parts", f"more than {max_parts} MIME parts")
            break
        part, boundary = _entity(raw, item)
        if boundary:
            parts.append(dataclasses.replace(part, kind="multipart"))
            default = "message/rfc822" if part.content_type == "multipart/digest" else "text/plain"
            room = max_parts - len(parts)
            spans = _children(raw, part.body_start, part.end, boundary, room)
            if len(spans) > room:
                limit = limit or MimeLimitExceeded("too_many_parts", f"more than {max_parts} MIME parts")
                spans = spans[:room]
            stack.extend(_Pending(s, e, _child_path(item.path, i), item.depth + 1, False, default)
                         for i, (s, e) in reversed(list(enumerate(spans, 1))))
        elif part.content_type in MESSAGE_TYPES and part.transfer_encoding in IDENTITY_ENCODINGS:
            parts.append(dataclasses.replace(part, kind="message"))
            stack.append(_Pending(part.body_start, part.end, part.path, item.depth + 1, True))
        else:
            path = item.path
            if item.message_root:  # a single-part message: its body is part "1" (below a message, "P.1")
                path = _child_path(item.path, 1)
            parts.append(dataclasses.replace(part, kind="leaf", path=path))
    return parts, limit


def walk(raw: bytes, *, max_depth: int = DEFAULT_MAX_DEPTH, max_parts: int = DEFAULT_MAX_PARTS) -> list[Part]:
    """Every MIME entity of `raw` in document order; raises `MimeLimitExceeded` past the caps."""
    parts, limit = walk_within(raw, max_depth=max_depth, max_parts=max_parts)
    if limit is not None:
        raise limit
    return parts


def leaf_at(parts: list[Part], path: str) -> Part | None:
    return next((p for p in parts if p.is_leaf and p.path == path), None)


# ---- bodies ------------------------------------------------------------------------------------


_NOT_BASE64 = bytes(set(range(256)) - set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"))


def _base64(data: bytes) -> bytes:
    compact = data.translate(None, _NOT_BASE64)  # in C, without a copy per line break
    compact = compact[: len(compact) - len(compact) % 4] if len(compact) % 4 == 1 else compact
    return binascii.a2b_base64(compact + b"=" * (-len(compact) % 4))


def decode_body(raw: bytes, part: Part, limit: int | None = None) -> bytes:
    """The part's body with its transfer encoding undone (leniently, as clients do).

    `limit` decodes only about the first `limit` bytes (sniffing file signatures, capped text): only
    the encoded bytes those can come from are copied out of `raw`.
    """
    encoding = part.transfer_encoding
    end = part.end
    if limit is not None:
        encoded = {"base64": (limit * 4 // 3 + 4) * 2, "quoted-printable": limit * 3 + 3}.get(encoding, limit)
        end = min(end, part.body_start + encoded)  # base64: line breaks included
    body = raw[part.body_start:end]
    if encoding == "base64":
        try:
            data = _base64(body)
        except binascii.Error:
            data = b""
    elif encoding == "quoted-printable":
        data = binascii.a2b_qp(body)
    else:
        data = body
    return data if limit is None else data[:limit]
