"""attachment: hold back dangerous attachments, deliver the rest with a notice in their place.

The stage looks at the MIME parts of the parsed message every stage shares (`pipeline.mail.message`,
read once per process by `pipeline.mail.reader`; its walk, `pipeline.mail.mime`, follows nested
multiparts and ``message/rfc822``, decodes RFC 2047/2231 names, both ``filename`` and ``name``) and
checks every named part, and every part that is a zip archive (by name, type or signature):

- a blocked extension (the last one, after the trailing dots and spaces Windows drops);
- a run of `space_run` or more spaces hiding the real extension (``Rechnung.pdf      .exe``);
- a double extension: a document-looking extension before a non-document one (``rechnung.pdf.exe``);
- control characters (bidi overrides included) and path separators in the name;
- for zip archives, the same rules for every entry of the central directory (nothing is extracted),
  path traversal in entry paths, more than `zip_max_entries` entries, an entry whose declared size
  is more than `zip_max_ratio` times its compressed size, and a broken archive.

A flagged part is held: a `held` event goes to the quarantine topic (the part stays in the stored
blob, `poststelle quarantine get` extracts it), a `replace_part` edit puts a short text part naming
it and saying how to get it released in its place in the delivered copy, and every recipient gets a
notice mail, injected into the pipeline the way DSNs are. The message itself goes on.

A message nested deeper than ``[message] max_depth`` or with more than ``[message] max_parts`` parts
is quarantined whole (or dead-lettered, `on_limit = "deadletter"`) with the reason: a part past the
cap was not looked at, so it must not be delivered. The walk stops at the cap, so time and memory
stay bounded. A missing blob is a poison message; blob store I/O errors are temporary.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import email.header
import email.utils
import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from typing import ClassVar

from pipeline.mail.headers import CapHit
from pipeline.mail.inject import NOTICE_LISTENER, inject_message
from pipeline.mail.message import ParsedMessage
from pipeline.mail.mime import Part, decode_body
from pipeline.mail.reader import message_reader
from pipeline.mail.render import notice_part
from pipeline.mail.zipdir import ZIP_MAGIC, BrokenZip, ZipEntry, list_zip
from pipeline.registry import register
from pipeline.settings import ConfigError
from pipeline.stage import Outcome, PoisonMessage, StageContext, TemporaryFailure, Work
from schemas.codec import plain
from schemas.events import Edit, Held, Received, Result, Verdict, epoch_from_iso
from schemas.ids import derived_id
from schemas.stages.attachment import AttachmentDetails, HeldPartDetails

__all__ = [
    "AttachmentSettings",
    "AttachmentStage",
    "SEED_BLOCKED_EXTENSIONS",
    "name_problems",
    "zip_problems",
    "printable",
    "Finding",
    "inspect_message",
]

SEED_BLOCKED_EXTENSIONS = [
    "ade", "adpx", "app", "bas", "bat", "chm", "cmd", "com", "cpl", "crt", "exe", "fpx", "hlp", "hta",
    "inf", "ins", "isp", "js", "jse", "lnk", "mda", "mdb", "mde", "mdt", "mdw", "mdz", "msc", "msi",
    "msp", "mst", "ops", "pcd", "pif", "prf", "prg", "reg", "scf", "scr", "sct", "shb", "shs", "url",
    "vb", "vbe", "vbs", "wsc", "wsf", "wsh", "xsl",
]
DECOY_EXTENSIONS = [
    "pdf", "doc", "docx", "xls", "xlsx", "ppt", "pptx", "odt", "ods", "odp", "rtf", "txt", "csv",
    "jpg", "jpeg", "png", "gif", "bmp", "tif", "tiff", "mp3", "mp4", "wav", "avi", "mov", "htm", "html",
]
ARCHIVE_EXTENSIONS = ["zip", "gz", "tgz", "bz2", "xz", "7z", "rar", "tar"]
ZIP_TYPES = ("application/zip", "application/x-zip-compressed", "application/x-zip")
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
MAX_REASONS = 20  # per part, the rest summarized
_TRAILING = re.compile(r"[\s.]+$")
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True, slots=True)
class AttachmentSettings:
    blocked_extensions: list[str] = field(default_factory=lambda: list(SEED_BLOCKED_EXTENSIONS))
    # "a.pdf.exe": a document extension (decoy) before one that is neither a document nor an archive
    double_extension: bool = True
    decoy_extensions: list[str] = field(default_factory=lambda: list(DECOY_EXTENSIONS))
    archive_extensions: list[str] = field(default_factory=lambda: list(ARCHIVE_EXTENSIONS))
    space_run: int = 5  # this many spaces in a row in a name hide its end; 0: not checked
    control_characters: bool = True
    path_separators: bool = True
    zip: bool = True  # list zip archives and check their entries
    zip_max_entries: int = 1000
    zip_max_ratio: float = 100.0  # declared size / compressed size of one entry
    zip_ratio_min_size: int = 1_048_576  # entries declaring less are not ratio-checked
    on_limit: str = "quarantine"  # past [message] max_depth/max_parts: "quarantine" or "deadletter"
    notify: bool = True  # send each recipient a notice mail
    release_contact: str = ""  # who releases held parts; "": postmaster@<first local domain>

    MOVED_KEYS: ClassVar[dict[str, str]] = {
        "max_depth": "moved to [message] max_depth (one set of caps for every stage)",
        "max_parts": "moved to [message] max_parts (one set of caps for every stage)",
    }

    def __post_init__(self) -> None:
        if self.on_limit not in ("quarantine", "deadletter"):
            raise ConfigError(f"stages.attachment.on_limit: expected quarantine or deadletter, got {self.on_limit!r}")
        if self.space_run < 0 or self.zip_max_entries < 0 or self.zip_max_ratio <= 0:
            raise ConfigError("stages.attachment: space_run, zip_max_entries >= 0 and zip_max_ratio > 0")


@dataclass(frozen=True, slots=True)
class Finding:
    """A part to hold and why."""

    part: Part
    filename: str
    reasons: list[str]
    sha256: str


# ---- names -------------------------------------------------------------------------------------


def printable(name: str) -> str:
    """`name` with control, format and unusual space characters escaped, for notices and logs."""
    return "".join(c if c == " " or c.isprintable() else f"\\u{ord(c):04x}" for c in name)


def _extensions(name: str) -> list[str]:
    """The dot-separated extensions of the base name, lower case, as Windows would see them."""
    base = re.split(r"[/\\]", _TRAILING.sub("", name))[-1]
    return [piece.strip().lower() for piece in base.split(".")[1:]]


def _longest_space_run(name: str) -> int:
    runs = re.findall(r"\s+", _TRAILING.sub("", name))
    return max((len(r) for r in runs), default=0)


def name_problems(name: str, s: AttachmentSettings, *, in_archive: bool = False) -> list[str]:
    """Why a file name is dangerous ([] when it is not)."""
    problems: list[str] = []
    if s.control_characters:
        bad = sorted({c for c in name if unicodedata.category(c) == "Cc" or c in BIDI_CONTROLS})
        if bad:
            problems.append("control_character: " + " ".join(f"U+{ord(c):04X}" for c in bad))
    if s.path_separators and not in_archive and ("/" in name or "\\" in name):
        problems.append("path_separator")
    if s.space_run and _longest_space_run(name) >= s.space_run:
        problems.append(f"space_run: {_longest_space_run(name)} spaces in a row hide the end of the name")
    extensions = _extensions(name)
    blocked = {e.lower().lstrip(".") for e in s.blocked_extensions}
    if extensions and extensions[-1] in blocked:
        problems.append(f"blocked_extension: .{extensions[-1]}")
    if s.double_extension and len(extensions) >= 2:
        inner, outer = extensions[-2], extensions[-1]
        decoys = {e.lower().lstrip(".") for e in s.decoy_extensions}
        harmless = decoys | {e.lower().lstrip(".") for e in s.archive_extensions}
        if inner in decoys and outer and outer not in harmless:
            problems.append(f"double_extension: .{inner}.{outer}")
    return problems


# ---- zip archives ------------------------------------------------------------------------------


def _entry_path_problems(path: str) -> list[str]:
    components = path.replace("\\", "/").split("/")
    if path.startswith(("/", "\\")) or _DRIVE.match(path) or ".." in components:
        return ["path_traversal"]
    if "\\" in path:
        return ["path_separator: backslash"]
    return []


def _entry_problems(entry: ZipEntry, s: AttachmentSettings) -> list[str]:
    problems: list[str] = []
    for name in entry.names:
        found = _entry_path_problems(name) if s.path_separators else []
        if not entry.is_dir:
            found += name_problems(re.split(r"[/\\]", name)[-1], s, in_archive=True)
        elif s.control_characters:
            found += [p for p in name_problems(name, s, in_archive=True) if p.startswith("control_character")]
        problems += [f"zip entry {printable(name)!r}: {p}" for p in found]
    if entry.size >= s.zip_ratio_min_size and entry.size > s.zip_max_ratio * max(entry.compressed_size, 1):
        ratio = entry.size / max(entry.compressed_size, 1)
        problems.append(f"zip entry {printable(entry.name)!r}: zip_ratio: declares {entry.size} bytes from "
                        f"{entry.compressed_size} (ratio {ratio:.0f} > {s.zip_max_ratio:g})")
    return problems


def zip_problems(data: bytes, s: AttachmentSettings) -> list[str]:
    """Why a zip archive must be held ([] when it need not be)."""
    try:
        listing = list_zip(data, s.zip_max_entries)
    except BrokenZip as exc:
        return [f"zip_broken: {exc}"]
    except Exception as exc:  # struct errors on truncated data: broken too
        return [f"zip_broken: {type(exc).__name__}: {exc}"]
    if listing.declared > s.zip_max_entries:
        return [f"zip_too_many_entries: {listing.declared} > {s.zip_max_entries}"]
    problems: list[str] = []
    for entry in listing.entries:
        problems += _entry_problems(entry, s)
    return problems


def _is_zip(part: Part, head: bytes) -> bool:
    if head.startswith(ZIP_MAGIC) or part.content_type in ZIP_TYPES:
        return True
    return any(_TRAILING.sub("", n).lower().endswith(".zip") for n in part.names)


# ---- one message -------------------------------------------------------------------------------


def _summarized(reasons: list[str]) -> list[str]:
    unique = list(dict.fromkeys(reasons))
    if len(unique) <= MAX_REASONS:
        return unique
    return [*unique[:MAX_REASONS], f"... and {len(unique) - MAX_REASONS} more"]


def _part_problems(raw: bytes, part: Part, s: AttachmentSettings) -> tuple[list[str], bool]:
    """(reasons, whether it was listed as a zip archive) for one leaf."""
    reasons: list[str] = []
    for name in part.names:
        reasons += name_problems(name, s)
    if not s.zip or (not part.names and part.content_type.startswith("text/")):
        return reasons, False
    if not _is_zip(part, decode_body(raw, part, limit=4)):
        return reasons, False
    return reasons + zip_problems(decode_body(raw, part), s), True


@dataclass(slots=True)
class Inspection:
    parts: int = 0
    named: int = 0
    archives: int = 0
    findings: list[Finding] = field(default_factory=list)


def inspect_message(message: ParsedMessage, s: AttachmentSettings) -> Inspection:
    """Every part of the message to hold (of the parts the walk reached: the stage quarantines a
    message whose walk stopped at a cap before it gets here)."""
    raw = message.raw
    result = Inspection(parts=len(message.parts))
    for part in message.parts:
        if not part.is_leaf:
            continue
        result.named += bool(part.names)
        reasons, listed = _part_problems(raw, part, s)
        result.archives += listed
        if reasons:
            result.findings.append(Finding(part=part, filename=(part.names or ("",))[0],
                                           reasons=_summarized(reasons),
                                           sha256=hashlib.sha256(part.body(raw)).hexdigest()))
    return result


# ---- notices -----------------------------------------------------------------------------------


def _label(finding: Finding) -> str:
    return f'"{printable(finding.filename)}"' if finding.filename else f"an unnamed {finding.part.content_type} part"


def part_notice(finding: Finding, message_id: str, contact: str) -> str:
    """The text put in the held part's place in the delivered message."""
    return (
        f"The attachment {_label(finding)} was removed from this message and is held in quarantine.\n"
        f"Reason: {'; '.join(finding.reasons)}\n"
        f"To get it released, write to {contact} and quote\n"
        f"    message id: {message_id}\n"
        f"    part: {finding.part.path}\n"
    )


def _date(iso: str) -> str:
    """An RFC 5322 date for an event time, so the same message always gets the same notice."""
    return email.utils.format_datetime(dt.datetime.fromtimestamp(epoch_from_iso(iso), dt.timezone.utc))


def _encoded_header(name: str, value: str) -> str:
    if value.isascii():
        return f"{name}: {value}\r\n"
    return f"{name}: {email.header.Header(value, 'utf-8', header_name=name).encode()}\r\n"


def notice_mail(message: Received, findings: list[Finding], recipient: str, *, notice_id: str,
                contact: str, hostname: str) -> bytes:
    """The notice to one recipient that attachments of a message to them are held."""
    held = "\n".join(f"  - {_label(f)} (part {f.part.path}): {'; '.join(f.reasons)}" for f in findings)
    sender = printable(message.envelope.mail_from) or "<>"
    subject = printable(message.headers.subject)
    text = (
        f"A message to you from {sender} (subject \"{subject}\") was delivered without\n"
        f"{len(findings)} attachment(s), which are held in quarantine because they may be dangerous:\n\n"
        f"{held}\n\n"
        f"To get an attachment released, write to {contact} and quote the message id\n"
        f"{message.message_id} and the part number.\n"
    )
    first = printable(findings[0].filename) or "unnamed part"
    head = (
        f"From: Poststelle <{contact}>\r\n"
        f"To: <{recipient}>\r\n"
        + _encoded_header("Subject", f"Attachment held: {first}")
        + f"Date: {_date(message.time)}\r\n"
        f"Message-ID: <{notice_id}@{hostname}>\r\n"
        + (f"In-Reply-To: {message.headers.message_id_header}\r\n"
           if message.headers.message_id_header.isascii() and message.headers.message_id_header else "")
        + f"Auto-Submitted: auto-generated\r\n"
        f"X-Poststelle-Held: {message.message_id}\r\n"
        "MIME-Version: 1.0\r\n"
    )
    fields, body = notice_part(text)
    return head.encode("utf-8") + fields + b"\r\n" + body


# ---- the stage ---------------------------------------------------------------------------------


@register
class AttachmentStage:
    name = "attachment"
    description = "Holds attachments with dangerous names (also inside zip archives), delivers the rest"
    Settings = AttachmentSettings

    def __init__(self, settings: AttachmentSettings, context: StageContext) -> None:
        self.settings = settings
        self.blobs = context.blobs  # for the notices it stores
        self.reader = message_reader(context.blobs, context.settings.message)
        ingress = context.settings.ingress
        self.hostname = ingress.hostname
        domain = (ingress.local_domains or [ingress.hostname])[0]
        self.contact = settings.release_contact or f"postmaster@{domain}"

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def process(self, work: Work) -> Outcome:
        message = work.message
        parsed = await self.reader.parsed(message.blob, content=False)  # the parts and the stored bytes
        walk_cap = parsed.hit("max_depth") or parsed.hit("max_parts")
        if walk_cap is not None:
            return self._over_limit(walk_cap)
        inspection = await asyncio.to_thread(inspect_message, parsed, self.settings)  # zip listings: CPU
        details = AttachmentDetails(parts=inspection.parts, named=inspection.named, archives=inspection.archives,
                                    held=[HeldPartDetails(part=f.part.path, filename=printable(f.filename),
                                                          content_type=f.part.content_type, reasons=f.reasons)
                                          for f in inspection.findings])
        if not inspection.findings:
            return Outcome(verdict=Verdict.PASS, details=plain(details))
        held = [self._held(message, f, work.recipients, work.history) for f in inspection.findings]
        edits = [Edit(stage=self.name, kind="replace_part", part=f.part.path, sha256=f.sha256,
                      value=part_notice(f, message.message_id, self.contact)) for f in inspection.findings]
        notices = await self._notices(message, inspection.findings, work.recipients) if self.settings.notify else []
        return Outcome(verdict=Verdict.FAIL, details=plain(details), edits=edits, held=held,
                       inject=notices)

    def _over_limit(self, cap: CapHit) -> Outcome:
        limit = "too_deep" if cap.key == "max_depth" else "too_many_parts"
        reason = f"mime_{limit}"
        if self.settings.on_limit == "deadletter":
            raise PoisonMessage(reason, cap.detail)
        details = AttachmentDetails(limit=limit)
        return Outcome(verdict=Verdict.FAIL, details=plain(details), quarantine=f"{reason}: {cap.detail}")

    def _held(self, message: Received, finding: Finding, recipients: list[str], history: list[Result]) -> Held:
        return Held(id=derived_id(message.message_id, f"held:{finding.part.path}"), message_id=message.message_id,
                    stage=self.name, part=finding.part.path, sha256=finding.sha256, filename=finding.filename,
                    content_type=finding.part.content_type, reasons=finding.reasons,
                    recipients=list(recipients), message=message, results=list(history))

    async def _notices(self, message: Received, findings: list[Finding], recipients: list[str]) -> list[Received]:
        def build() -> list[Received]:
            notices = []
            for recipient in dict.fromkeys(recipients):
                notice_id = derived_id(message.message_id, f"attachment-notice:{recipient}")
                raw = notice_mail(message, findings, recipient, notice_id=notice_id, contact=self.contact,
                                  hostname=self.hostname)
                notices.append(inject_message(
                    self.blobs, raw, message_id=notice_id,
                    event_id=derived_id(message.message_id, f"attachment-notice-event:{recipient}"),
                    mail_from="", rcpt_to=[recipient], hostname=self.hostname, listener=NOTICE_LISTENER))
            return notices

        try:
            return await asyncio.to_thread(build)
        except OSError as exc:
            raise TemporaryFailure(f"blob store: {exc}") from exc
