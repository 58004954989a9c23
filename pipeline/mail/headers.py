"""The header section of a message: its fields in order, and who the message says it is from.

`parse_header(raw, caps)` reads the header section (up to the first empty line, exactly where the
MIME walker starts the body) into `HeaderField`s: the name as written, the raw value bytes (folding
kept) and the decoded value (unfolded, RFC 2047 encoded words decoded, 8-bit bytes as UTF-8, else
Latin-1). A field name may be followed by white space before the colon (RFC 5322 obsolete syntax:
``From : x`` is a From field). A line that is neither a field nor a continuation is skipped and
recorded in `defects`; it does not end the header section.

Caps: the first `max_header_bytes` of the section and `max_header_fields` fields are read, the rest
is not (`caps_hit` says which cap). Each decoded value covers the first 16 KiB of its field
(`DECODED_FIELD_BYTES`); the raw bytes are always complete.

**The From policy** (`Authors`, one parse for every check, see docs/architecture.md):

- Every From field is parsed by the email package's RFC 5322 address parser (`policy.default`):
  `mailboxes` are all mailboxes of all From fields in order, members of groups included.
- The From is *readable* when there is at least one From field, the header section was read whole,
  the From fields together are at most `FROM_BYTES` long, the parser reported no defect other than
  obsolete syntax (RFC 5322 section 4) or non-ASCII in a local part (RFC 6532), every mailbox has a
  local part and a domain, and there is at least one mailbox. Otherwise `problems` says why: an
  encoded word hiding an address, a comment where the address should be, two addresses without a
  comma, garbage, an empty group alone. The sender-login check takes every address or refuses.
- The *author domain* (DMARC's RFC5322.From domain) is set only when the From is readable, there is
  exactly one From field, and all its mailboxes share one domain that is a DNS name with at least
  two labels (IDNA A-labels, lower case); else it is "" and `no_domain_because` says why. Several
  mailboxes of one domain have that domain (RFC 7489 6.6.1).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from email import errors
from email.policy import default as rfc5322

from pipeline.mail.domains import InvalidName, normalize_domain
from pipeline.mail.mime import decode_header_bytes, decode_words, header_section
from pipeline.settings import MessageSettings

__all__ = ["HeaderField", "Mailbox", "Authors", "MessageHeader", "CapHit", "parse_header", "DECODED_FIELD_BYTES",
           "FROM_BYTES"]

DECODED_FIELD_BYTES = 16_384  # of each field's value decoded (encoded words: bounded time)
FROM_BYTES = 8_192  # the From fields together; the address parser is quadratic on hostile input
_FIELD_START = re.compile(rb"^[^ \t]", re.MULTILINE)  # a line that is not a continuation
_FOLD = re.compile(rb"\r?\n(?=[ \t])")
_LINE_BREAK = re.compile(rb"[\r\n]")
_FIELD_NAME = re.compile(rb"[\x21-\x7e]+")
# defects that leave the addresses certain: obsolete but defined syntax, UTF-8 local parts
_HARMLESS_DEFECTS = (errors.ObsoleteHeaderDefect, errors.NonASCIILocalPartDefect, errors.UndecodableBytesDefect)


@dataclass(frozen=True, slots=True)
class CapHit:
    """A cap the parse stopped at: the `[message]` key and what was past it."""

    key: str  # max_depth, max_parts, max_header_bytes, max_header_fields, max_text_bytes, max_links
    detail: str


@dataclass(frozen=True, slots=True)
class HeaderField:
    """One header field: `raw` as stored, `value` as a reader sees it."""

    name: str  # as written, white space before the colon removed
    raw: bytes  # the bytes after the colon, folding kept, without the final line break
    value: str  # unfolded, encoded words decoded, outer white space stripped
    offset: int  # where the field starts in the message

    @property
    def key(self) -> str:
        """The name in lower case, for comparisons."""
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Mailbox:
    """One From address as the RFC 5322 parser read it."""

    address: str  # the addr-spec, local part quoted where it must be ("" parts when missing)
    local_part: str
    domain: str  # as written
    display_name: str = ""  # decoded
    group: str = ""  # the group's display name when the mailbox stands in a group

    @property
    def normalized_domain(self) -> str:
        """The domain in IDNA A-labels, lower case; "" when it is no DNS name (a literal, garbage)."""
        try:
            return normalize_domain(self.domain)
        except InvalidName:
            return ""


@dataclass(frozen=True, slots=True)
class Authors:
    """The From fields, parsed once: every address, whether they are certain, the author domain."""

    fields: int  # how many From fields the header section has
    mailboxes: tuple[Mailbox, ...]
    problems: tuple[str, ...]  # why the From is not readable; () when it is
    domain: str  # the author domain, "" when there is none
    no_domain_because: str  # why there is none

    @property
    def readable(self) -> bool:
        return not self.problems

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(m.address for m in self.mailboxes)

    @property
    def domains(self) -> tuple[str, ...]:
        """The distinct normalised domains of all From mailboxes, in order (readable or not)."""
        return tuple(dict.fromkeys(d for d in (m.normalized_domain for m in self.mailboxes) if d))


@dataclass(frozen=True, slots=True)
class MessageHeader:
    fields: tuple[HeaderField, ...]
    authors: Authors
    header_end: int  # offset just past the last field
    body_start: int  # offset of the first body byte
    defects: tuple[str, ...] = ()
    caps: tuple[CapHit, ...] = ()  # max_header_bytes, max_header_fields

    def all(self, name: str) -> tuple[HeaderField, ...]:
        key = name.lower()
        return tuple(f for f in self.fields if f.key == key)

    def first(self, name: str) -> str:
        """The decoded value of the first field called `name`; "" when there is none."""
        key = name.lower()
        return next((f.value for f in self.fields if f.key == key), "")

    @property
    def subject(self) -> str:
        return self.first("Subject")


# ---- fields ------------------------------------------------------------------------------------


def unfolded(raw: bytes) -> str:
    """A field's raw value on one line, as text (not RFC 2047 decoded)."""
    if b"\n" in raw or b"\r" in raw:
        raw = _LINE_BREAK.sub(b" ", _FOLD.sub(b"", raw))
    return decode_header_bytes(raw).strip()


def _field(chunk: bytes, offset: int) -> HeaderField | None:
    first_line = chunk.split(b"\n", 1)[0]
    colon = first_line.find(b":")
    if colon <= 0:
        return None
    name = chunk[:colon].rstrip(b" \t")
    if _FIELD_NAME.fullmatch(name) is None:  # printable US-ASCII, at least one
        return None
    raw = chunk[colon + 1:]
    raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1] if raw.endswith(b"\n") else raw
    return HeaderField(name=name.decode("ascii"), raw=raw, value=decode_words(unfolded(raw[:DECODED_FIELD_BYTES])),
                       offset=offset)


def _fields(raw: bytes, header_end: int, caps: MessageSettings) -> tuple[list[HeaderField], list[str], list[CapHit]]:
    """(fields, defects, caps hit) of the header section raw[:header_end]."""
    caps_hit: list[CapHit] = []
    end = header_end
    if end > caps.max_header_bytes:
        end = caps.max_header_bytes
        caps_hit.append(CapHit("max_header_bytes", f"header section of {header_end} bytes, "
                                                   f"{caps.max_header_bytes} read"))
    starts = []
    for match in _FIELD_START.finditer(raw, 0, end):
        if len(starts) > caps.max_header_fields:
            break
        starts.append(match.start())
    defects = ["continuation_before_first_field"] if starts and starts[0] > 0 else []
    if len(starts) > caps.max_header_fields:
        caps_hit.append(CapHit("max_header_fields", f"more than {caps.max_header_fields} header fields"))
        end = starts[caps.max_header_fields]
        starts = starts[:caps.max_header_fields]
    elif end < header_end and starts:
        end = starts.pop()  # the last field may be cut short: leave it out
    fields = []
    for start, stop in zip(starts, [*starts[1:], end]):
        found = _field(raw[start:stop], start)
        if found is None:
            defects.append(f"malformed_line@{start}")
        else:
            fields.append(found)
    return fields, defects, caps_hit


# ---- From --------------------------------------------------------------------------------------


_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_ATOM = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
# The From forms of nearly all mail, which the RFC 5322 parser would read without a defect: an
# address in angle brackets after an optional display name of plain atoms or one quoted string
# without escapes, or a bare address. Everything else (comments, groups, lists, escapes, encoded
# words, non-ASCII, obsolete syntax) goes to the full parser.
_SIMPLE_FROM = re.compile(
    rf'(?:(?P<phrase>{_ATEXT}+(?: {_ATEXT}+)*) ?|"(?P<quoted>[ !#-\[\]-~]*)" ?)?<(?P<local>{_DOT_ATOM})@(?P<domain>{_DOT_ATOM})>'
    rf"|(?P<bare_local>{_DOT_ATOM})@(?P<bare_domain>{_DOT_ATOM})"
)


def _simple_mailbox(value: str) -> Mailbox | None:
    """The one mailbox of a From value in a simple form (`_SIMPLE_FROM`), as the parser gives it."""
    if "=?" in value:
        return None  # an encoded word is decoded by the parser
    match = _SIMPLE_FROM.fullmatch(value)
    if match is None:
        return None
    local = match["local"] or match["bare_local"]
    domain = match["domain"] or match["bare_domain"]
    display = match["phrase"] or match["quoted"] or ""
    return Mailbox(address=f"{local}@{domain}", local_part=local, domain=domain, display_name=display)


def _mailboxes(number: int, field: HeaderField) -> tuple[list[Mailbox], list[str]]:
    """The mailboxes of one From field and what makes them uncertain."""
    value = unfolded(field.raw)
    simple = _simple_mailbox(value)
    if simple is not None:
        return [simple], []
    try:
        parsed = rfc5322.header_factory("from", value)
        groups, defects = parsed.groups, parsed.defects
    except Exception as exc:  # RecursionError on deeply nested comments, ValueError on odd parts
        return [], [f"From field {number}: unparseable ({type(exc).__name__})"]
    problems = [f"From field {number}: {d}" for d in defects if not isinstance(d, _HARMLESS_DEFECTS)]
    found = []
    for group in groups:
        for address in group.addresses:
            mailbox = Mailbox(address=address.addr_spec, local_part=address.username, domain=address.domain,
                              display_name=address.display_name, group=group.display_name or "")
            if not address.username or not address.domain:
                problems.append(f"From field {number}: address {address.addr_spec!r} lacks a local part or domain")
            found.append(mailbox)
    return found, problems


def _author_domain(fields: int, mailboxes: list[Mailbox], problems: list[str]) -> tuple[str, str]:
    if problems:
        return "", problems[0]
    if fields != 1:
        return "", f"{fields} From header fields"
    domains = list(dict.fromkeys(m.normalized_domain for m in mailboxes))
    if "" in domains:
        bad = next(m for m in mailboxes if not m.normalized_domain)
        return "", f"no domain in From address {bad.address!r}"
    if len(domains) != 1:
        return "", f"From addresses in {len(domains)} domains ({', '.join(domains)})"
    if "." not in domains[0]:
        return "", f"no domain in From address {mailboxes[0].address!r}"
    return domains[0], ""


def authors_of(fields: list[HeaderField], header_whole: bool) -> Authors:
    """The From policy (see the module docstring) applied to the header fields."""
    from_fields = [f for f in fields if f.key == "from"]
    problems: list[str] = []
    mailboxes: list[Mailbox] = []
    if not header_whole:
        problems.append("the header section is longer than the caps: a From field may be unread")
    if not from_fields:
        problems.append("no From field")
    elif sum(len(f.raw) for f in from_fields) > FROM_BYTES:
        problems.append(f"the From fields are longer than {FROM_BYTES} bytes")
    else:
        for number, field in enumerate(from_fields, 1):
            found, trouble = _mailboxes(number, field)
            mailboxes += found
            problems += trouble
        if not mailboxes:
            problems.append("no address in From")
    domain, why = _author_domain(len(from_fields), mailboxes, problems)
    return Authors(fields=len(from_fields), mailboxes=tuple(mailboxes), problems=tuple(problems), domain=domain,
                   no_domain_because=why)


def parse_header(raw: bytes, caps: MessageSettings | None = None) -> MessageHeader:
    """The header section of `raw` (see the module docstring); never raises."""
    caps = caps or MessageSettings()
    header_end, body_start = header_section(raw)
    fields, defects, caps_hit = _fields(raw, header_end, caps)
    return MessageHeader(fields=tuple(fields), authors=authors_of(fields, not caps_hit), header_end=header_end,
                         body_start=body_start, defects=tuple(defects), caps=tuple(caps_hit))
