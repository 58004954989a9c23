"""What the rules read of one message, derived once per message and shared by every rule.

A `Scan` wraps the `ScanContext` (it answers `message`, `received`, `history`, `bayes` and
`result_of` the same way) and adds the views the rule kinds match, each built on first use and
kept for the other rules of the same message:

- `body`: the Subject, then the text of every text part, one paragraph per line: in plain text
  the lines of a paragraph are joined with a space (as SpamAssassin does, so a phrase wrapped
  across two lines still matches); rendered HTML keeps the lines the renderer made (at blocks and
  `<br>`). Runs of white space collapse to one. Each part counts with its first
  `BODY_PART_SCAN_SIZE` characters.
- `rawbody`: the decoded text of every text part with its line breaks, HTML markup kept, the first
  `RAWBODY_PART_SCAN_SIZE` characters of each.
- `full`: the first `FULL_SCAN_SIZE` bytes of the stored message.
- `urls`: every distinct link URL (its first `URI_SCAN_SIZE` characters); `link_domains`: every
  distinct registrable domain of a link, or its address when the host is an IP address.
- `header(field, view)`: the values a header rule reads (see docs/spam-rules.md).

The caps bound the cost of every pattern whatever the message: RE2 matches in time linear in the
text, and the text is at most these sizes (figures in docs/performance.md).
"""
from __future__ import annotations

import email.utils
import re
from functools import cached_property

from consumers.stages.spam.context import ScanContext
from pipeline.mail.message import ParsedMessage, TextPart
from pipeline.mail.mime import decode_header_bytes
from schemas.events import Received, Result

__all__ = ["Scan", "BODY_PART_SCAN_SIZE", "RAWBODY_PART_SCAN_SIZE", "FULL_SCAN_SIZE", "URI_SCAN_SIZE",
           "HEADER_SCAN_SIZE", "ADDRESS_FIELD_CHARS", "PSEUDO_FIELDS"]

BODY_PART_SCAN_SIZE = 50_000  # characters of each text part's rendered text (SpamAssassin 4's default)
RAWBODY_PART_SCAN_SIZE = 500_000  # characters of each text part's decoded text (SpamAssassin 4's default)
FULL_SCAN_SIZE = 1_048_576  # bytes of the stored message that `full` rules see
URI_SCAN_SIZE = 8_192  # characters of one link URL
HEADER_SCAN_SIZE = 65_536  # characters of the values of one header rule (all fields of that name together)
ADDRESS_FIELD_CHARS = 4_096  # of a To/Cc/Reply-To value parsed for :addr and :name
PSEUDO_FIELDS = ("ALL", "ToCc", "EnvelopeFrom")

_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n")


def paragraphs(text: str) -> list[str]:
    """The paragraphs of a text, each on one line with its white space collapsed."""
    found = (" ".join(chunk.split()) for chunk in _PARAGRAPH_BREAK.split(text))
    return [p for p in found if p]


def lines(text: str) -> list[str]:
    """The non-empty lines of rendered HTML (the renderer breaks lines at blocks and <br>), each
    with its white space collapsed."""
    found = (" ".join(line.split()) for line in text.split("\n"))
    return [line for line in found if line]


class Scan:
    """One message as the rules read it: the `ScanContext` and the views built from it once."""

    def __init__(self, ctx: ScanContext) -> None:
        self.ctx = ctx

    # -- the context, as ScanContext answers it ------------------------------------------------

    @property
    def message(self) -> ParsedMessage:
        return self.ctx.message

    @property
    def received(self) -> Received:
        return self.ctx.received

    @property
    def history(self) -> tuple[Result, ...]:
        return self.ctx.history

    @property
    def bayes(self) -> float | None:
        return self.ctx.bayes

    def result_of(self, stage: str) -> Result | None:
        return self.ctx.result_of(stage)

    def memo(self, key: str, compute):
        """`compute()` once per message under `key`: for what several built-in tests share."""
        cache = self._memo
        if key not in cache:
            cache[key] = compute()
        return cache[key]

    @cached_property
    def _memo(self) -> dict:
        return {}

    # -- bodies --------------------------------------------------------------------------------

    @cached_property
    def texts(self) -> tuple[TextPart, ...]:
        return self.ctx.message.texts

    @cached_property
    def body_paragraphs(self) -> tuple[str, ...]:
        """The paragraphs of the rendered text of all text parts (without the Subject)."""
        found: list[str] = []
        for part in self.texts:
            text = part.text[:BODY_PART_SCAN_SIZE]
            found += lines(text) if part.is_html else paragraphs(text)
        return tuple(found)

    @cached_property
    def body_text(self) -> str:
        """The rendered text, one paragraph per line, without the Subject (for the built-in tests)."""
        return "\n".join(self.body_paragraphs)

    @cached_property
    def body(self) -> bytes:
        """What `body` rules match: the Subject, then the paragraphs, as UTF-8."""
        subject = " ".join(self.ctx.message.header.subject.split())
        return f"{subject}\n{self.body_text}".encode("utf-8", "surrogatepass")

    @cached_property
    def rawbody(self) -> bytes:
        chunks = ((part.markup or part.text)[:RAWBODY_PART_SCAN_SIZE] for part in self.texts)
        return "\n".join(chunks).encode("utf-8", "surrogatepass")

    @cached_property
    def full(self) -> bytes:
        return self.ctx.message.raw[:FULL_SCAN_SIZE]

    # -- links ---------------------------------------------------------------------------------

    @cached_property
    def urls(self) -> tuple[bytes, ...]:
        found = dict.fromkeys(link.url[:URI_SCAN_SIZE] for link in self.ctx.message.links)
        return tuple(url.encode("utf-8", "surrogatepass") for url in found)

    @cached_property
    def link_domains(self) -> tuple[bytes, ...]:
        found = dict.fromkeys(link.host if link.ip else link.domain for link in self.ctx.message.links)
        return tuple(name.encode("ascii", "replace") for name in found if name)

    # -- header fields -------------------------------------------------------------------------

    def header(self, field: str, view: str = "") -> str:
        """The text a header rule reads: the values of every field called `field`, one per line
        ("" when there is none); `view` "raw" (not decoded, folding kept), "addr" or "name" (the
        addresses or display names of an address field, one per line)."""
        key = (field.lower(), view)
        cache = self._headers
        if key not in cache:
            cache[key] = self._header_text(field, view)[:HEADER_SCAN_SIZE]
        return cache[key]

    @cached_property
    def _headers(self) -> dict[tuple[str, str], str]:
        return {}

    def _fields(self, field: str):
        header = self.ctx.message.header
        if field.lower() == "tocc":
            return (*header.all("To"), *header.all("Cc"))
        return header.all(field)

    def _header_text(self, field: str, view: str) -> str:
        header = self.ctx.message.header
        if field == "EnvelopeFrom":
            return self.ctx.received.envelope.mail_from
        if field == "ALL":
            source = header.fields
            if view == "raw":
                return "\n".join(f"{f.name}:{decode_header_bytes(f.raw[:HEADER_SCAN_SIZE])}" for f in source)
            return "\n".join(f"{f.name}: {f.value}" for f in source)
        fields = self._fields(field)
        if view == "raw":
            return "\n".join(decode_header_bytes(f.raw[:HEADER_SCAN_SIZE]).replace("\r\n", "\n") for f in fields)
        if view in ("addr", "name"):
            return "\n".join(self._addresses(field, view, fields))
        return "\n".join(f.value for f in fields)

    def _addresses(self, field: str, view: str, fields) -> list[str]:
        if field.lower() == "from":  # the one parse of the From fields every check uses
            boxes = self.ctx.message.authors.mailboxes
            return [m.address if view == "addr" else m.display_name for m in boxes]
        pairs = email.utils.getaddresses([f.value[:ADDRESS_FIELD_CHARS] for f in fields])
        return [address if view == "addr" else name for name, address in pairs if address or name]

    def has_field(self, field: str) -> bool:
        if field == "EnvelopeFrom":
            return True
        if field == "ALL":
            return bool(self.ctx.message.header.fields)
        return bool(self._fields(field))
