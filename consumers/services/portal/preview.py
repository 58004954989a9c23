"""The safe preview of a held message, and its timeline in words.

A preview is text only: a few header fields and the text of the message's text parts, as
`pipeline.mail.message.parse_message` reads them (an HTML part's *rendered text*: scripts, styles,
images and links are not followed, nothing is fetched), plus the list of attachments by name, type
and size. The page shows it in a ``<pre>``, escaped; the browser never renders the message's HTML
and never loads anything the message names.

The timeline is the entry's own history from the quarantine state (held by which stage and why,
then each action with who did it); `pipeline.state.timeline`, when present, adds the message's
path through the pipeline.
"""
from __future__ import annotations

from dataclasses import dataclass

from consumers.services.portal.texts import t
from pipeline.blobstore import BlobNotFound, BlobStore
from pipeline.mail.message import parse_message
from pipeline.settings import MessageSettings
from pipeline.state.quarantine import Entry, extract

__all__ = ["Preview", "AttachmentLine", "TimelineLine", "preview_of", "entry_timeline", "PREVIEW_FIELDS",
           "MAX_PREVIEW_CHARS"]

PREVIEW_FIELDS = ("From", "To", "Cc", "Subject", "Date")
MAX_PREVIEW_CHARS = 100_000


@dataclass(frozen=True, slots=True)
class AttachmentLine:
    path: str
    filename: str
    content_type: str
    size: int
    held: bool  # the part the attachment stage held back


@dataclass(frozen=True, slots=True)
class Preview:
    headers: tuple[tuple[str, str], ...]
    text: str
    truncated: bool
    attachments: tuple[AttachmentLine, ...]
    missing: str = ""  # why there is no preview (the stored message is gone): a key of `texts`


def preview_of(blobs: BlobStore, entry: Entry, caps: MessageSettings | None = None) -> Preview:
    """The preview of the entry's stored message (never raises on any message)."""
    try:
        raw = extract(blobs, entry.event)
    except (BlobNotFound, OSError):
        return Preview((), "", False, (), missing="preview.missing")
    parsed = parse_message(raw, caps)
    headers = tuple((name, parsed.header.first(name)) for name in PREVIEW_FIELDS if parsed.header.first(name))
    texts = [t.text for t in parsed.texts if t.text.strip()]
    text = "\n\n----\n\n".join(texts)
    truncated = len(text) > MAX_PREVIEW_CHARS or any(t.truncated for t in parsed.texts)
    attachments = tuple(AttachmentLine(a.path, a.filename, a.content_type, a.size, a.path == entry.part)
                        for a in parsed.attachments)
    return Preview(headers, text[:MAX_PREVIEW_CHARS], truncated, attachments)


@dataclass(frozen=True, slots=True)
class TimelineLine:
    time: str
    what: str  # in words a user understands
    detail: str = ""  # for admins: stage, ids, who exactly


_ACTIONS = ("release", "approve", "request_release", "deny", "delete", "expire")  # timeline.<action> in `texts`


def _who(by: str, lang: str) -> str:
    kind, _, name = by.partition(":")
    if kind in ("portal", "link", "admin", "cli", "cleanup"):
        return t(f"who.{kind}", lang, name=name)
    return t("who.other", lang, name=by) if by else ""


def entry_timeline(entry: Entry, lang: str = "en") -> list[TimelineLine]:
    """Held, then each action on the entry, oldest first; the words in `lang`, the details (admins') English."""
    held_what = (t("timeline.part_held", lang, name=entry.filename or entry.part, reason=entry.reason)
                 if entry.kind == "part" else t("timeline.held", lang, stage=entry.stage, reason=entry.reason))
    lines = [TimelineLine(entry.time, held_what,
                          f"stage {entry.stage}, message {entry.message_id}, event {entry.event.id}")]
    for action in entry.actions:
        words = t(f"timeline.{action.action}", lang) if action.action in _ACTIONS else action.action
        extras = [t(key, lang) for flag, key in ((action.learn_ham, "timeline.learned"),
                                                 (action.allow_sender, "timeline.allowed")) if flag]
        what = " ".join(filter(None, [words + (f" ({', '.join(extras)})" if extras else ""), _who(action.by, lang)]))
        detail = ", ".join(filter(None, [f"by {action.by}", action.released_as and f"copy {action.released_as}",
                                         action.topic and f"to {action.topic}", action.note]))
        lines.append(TimelineLine(action.time, what, detail))
    return lines
