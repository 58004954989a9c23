"""One parsed view of a message, shared by every stage and check.

`parse_message(raw, caps)` makes, from the stored bytes, what checks look at: the header fields
(`pipeline.mail.headers`, with the one From policy), the MIME parts (`pipeline.mail.mime`, the one
walker), the text of each text part, the links and the attachments. Every stage reads this view,
so no two checks can be shown different messages: a From that the sender-login check refuses as
unreadable has no author domain for DMARC either, and the links the blocklist looks up are the
links the spam rules see.

Each leaf part is exactly one of:

- a **text part**: a ``text/*`` leaf without a file name and not ``Content-Disposition:
  attachment``. Its body is decoded (transfer encoding, then its charset, `pipeline.mail.charsets`:
  an unknown charset is read as UTF-8); ``text/html`` is rendered to text (`pipeline.mail.htmltext`:
  script and style dropped, entities decoded) and its markup kept. Links come from its link
  attributes and from URLs in its text (`pipeline.mail.links`).
- an **attachment**: every other leaf (named parts, ``attachment`` disposition, any non-text type,
  parts of attached messages included), with its size and the SHA-256 of its decoded content.

The content (texts, links, attachments) is the costly half: it decodes every body and renders the
HTML. `parse_message(raw, caps, content=False)` stops after the header and the parts, for a stage
that needs no more (auth, attachment); `with_content(parsed, caps)` adds it later to the very same
header and parts (the reader does so when a stage of the process asks for it), so both are one parse.
Reading `texts`, `links` or `attachments` of a view without content raises `ContentNotParsed`
rather than show a stage an empty message.

Caps (`MessageSettings`, the ``[message]`` section): `max_depth` and `max_parts` bound the walk,
`max_header_bytes` and `max_header_fields` the header section, `max_text_bytes` the decoded text of
all text parts together (HTML counted as markup), `max_links` the links kept. Past a cap the parse
keeps what it read and records a `CapHit`; it never raises on any input, and its time and memory
are bounded by the caps and the message size (figures in docs/performance.md).
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field

from pipeline.mail.charsets import decode_text
from pipeline.mail.headers import Authors, CapHit, MessageHeader, parse_header
from pipeline.mail.htmltext import render_html
from pipeline.mail.links import Link, is_link_url, make_link, urls_in_text
from pipeline.mail.mime import Part, decode_body, walk_within
from pipeline.settings import MessageSettings

__all__ = ["ParsedMessage", "MessageContent", "TextPart", "Attachment", "CapHit", "ContentNotParsed",
           "parse_message", "with_content"]


class ContentNotParsed(LookupError):
    """The view was parsed without its content (`content=False`); ask the reader for it."""


@dataclass(frozen=True, slots=True)
class TextPart:
    path: str  # IMAP part number
    content_type: str  # text/plain, text/html, text/...
    charset: str  # as declared ("" when none)
    decoded_as: str  # the codec that decoded it (differs from `charset` when that was unknown)
    transfer_encoding: str  # as declared: base64, quoted-printable, 7bit, ...
    text: str  # what a reader sees: the decoded text; for HTML the rendered text
    markup: str = ""  # the decoded HTML of a text/html part ("" otherwise)
    size: int = 0  # decoded bytes read (at most what was left of max_text_bytes)
    truncated: bool = False  # the part is longer than what was left of max_text_bytes

    @property
    def is_html(self) -> bool:
        return self.content_type == "text/html"


@dataclass(frozen=True, slots=True)
class Attachment:
    path: str
    filename: str  # the first of the part's names (Content-Disposition filename, Content-Type name)
    content_type: str
    disposition: str
    transfer_encoding: str
    size: int  # decoded bytes
    sha256: str  # of the decoded content (what a site's block list names)


@dataclass(frozen=True, slots=True)
class MessageContent:
    texts: tuple[TextPart, ...]
    links: tuple[Link, ...]  # in document order, repeats kept, at most max_links
    attachments: tuple[Attachment, ...]
    caps: tuple[CapHit, ...]  # max_text_bytes, max_links


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    header: MessageHeader
    parts: tuple[Part, ...]  # every MIME entity the walk reached, in document order
    walk_cap: CapHit | None = None  # max_depth or max_parts, when the walk stopped at one
    content: MessageContent | None = None  # None: parsed with content=False
    raw: bytes = field(repr=False, compare=False, default=b"")  # the stored bytes (for raw and full rules)

    @property
    def authors(self) -> Authors:
        return self.header.authors

    def _content(self) -> MessageContent:
        if self.content is None:
            raise ContentNotParsed("this view of the message was parsed without its content")
        return self.content

    @property
    def texts(self) -> tuple[TextPart, ...]:
        return self._content().texts

    @property
    def links(self) -> tuple[Link, ...]:
        return self._content().links

    @property
    def attachments(self) -> tuple[Attachment, ...]:
        return self._content().attachments

    @property
    def caps(self) -> tuple[CapHit, ...]:
        """The caps the parse stopped at (those of the content only once it is parsed)."""
        walk = (self.walk_cap,) if self.walk_cap else ()
        return (*self.header.caps, *walk, *(self.content.caps if self.content else ()))

    @property
    def caps_hit(self) -> tuple[str, ...]:
        return tuple(c.key for c in self.caps)

    def hit(self, key: str) -> CapHit | None:
        return next((c for c in self.caps if c.key == key), None)

    @property
    def leaves(self) -> tuple[Part, ...]:
        return tuple(p for p in self.parts if p.is_leaf)

    @property
    def link_hosts(self) -> tuple[str, ...]:
        """Distinct named link hosts (no IP addresses), in order."""
        return tuple(dict.fromkeys(link.host for link in self.links if link.named))


def _is_text(part: Part) -> bool:
    return part.content_type.startswith("text/") and not part.names and part.disposition != "attachment"


class _Builder:
    """The body of one parse: texts, links and attachments, within the caps."""

    def __init__(self, raw: bytes, caps: MessageSettings) -> None:
        self.raw = raw
        self.caps = caps
        self.text_left = caps.max_text_bytes
        self.texts: list[TextPart] = []
        self.links: list[Link] = []
        self.attachments: list[Attachment] = []
        self.hits: list[CapHit] = []

    def _hit(self, key: str, detail: str) -> None:
        if all(h.key != key for h in self.hits):
            self.hits.append(CapHit(key, detail))

    def _add_link(self, link: Link) -> None:
        if len(self.links) < self.caps.max_links:
            self.links.append(link)
        else:
            self._hit("max_links", f"more than {self.caps.max_links} links")

    def text_part(self, part: Part) -> None:
        data = decode_body(self.raw, part, limit=self.text_left + 1)
        truncated = len(data) > self.text_left
        if truncated:
            data = data[:self.text_left]
            self._hit("max_text_bytes", f"more than {self.caps.max_text_bytes} bytes of text")
        self.text_left -= len(data)
        text, codec = decode_text(data, part.charset)
        markup = ""
        if part.content_type == "text/html":
            markup = text
            rendered = render_html(markup, is_link_url, self.caps.max_links - len(self.links))
            text = rendered.text
            for found in rendered.links:
                self._add_link(make_link(found.url, part.path, found.attribute, found.text))
            if rendered.links_dropped:
                self._hit("max_links", f"more than {self.caps.max_links} links")
        for url in urls_in_text(text):
            self._add_link(make_link(url, part.path, "text"))
        self.texts.append(TextPart(path=part.path, content_type=part.content_type, charset=part.charset,
                                   decoded_as=codec, transfer_encoding=part.transfer_encoding, text=text,
                                   markup=markup, size=len(data), truncated=truncated))

    def attachment(self, part: Part) -> None:
        data = decode_body(self.raw, part)
        self.attachments.append(Attachment(
            path=part.path, filename=(part.names or ("",))[0], content_type=part.content_type,
            disposition=part.disposition, transfer_encoding=part.transfer_encoding, size=len(data),
            sha256=hashlib.sha256(data).hexdigest()))


def with_content(parsed: ParsedMessage, caps: MessageSettings | None = None) -> ParsedMessage:
    """`parsed` with its content (texts, links, attachments) parsed from its parts; never raises."""
    if parsed.content is not None:
        return parsed
    body = _Builder(parsed.raw, caps or MessageSettings())
    for part in parsed.parts:
        if part.is_leaf:
            (body.text_part if _is_text(part) else body.attachment)(part)
    content = MessageContent(texts=tuple(body.texts), links=tuple(body.links), attachments=tuple(body.attachments),
                             caps=tuple(body.hits))
    return dataclasses.replace(parsed, content=content)


def parse_message(raw: bytes, caps: MessageSettings | None = None, *, content: bool = True) -> ParsedMessage:
    """The parsed view of `raw` within `caps` (see the module docstring); never raises on any input.

    `content=False` parses the header and the parts only (`with_content` adds the rest later).
    """
    caps = caps or MessageSettings()
    header = parse_header(raw, caps)
    parts, limit = walk_within(raw, max_depth=caps.max_depth, max_parts=caps.max_parts)
    walk_cap = None
    if limit is not None:
        walk_cap = CapHit("max_depth" if limit.reason == "too_deep" else "max_parts", limit.detail)
    parsed = ParsedMessage(header=header, parts=tuple(parts), walk_cap=walk_cap, raw=raw)
    return with_content(parsed, caps) if content else parsed
