"""`poststelle quarantine`: what is held, read from the quarantine topic, and getting it back out.

The quarantine topic holds `quarantined` events (a whole message held by a stage) and `held` events
(one part held back by the attachment stage, the rest delivered). Neither copies the message: the
original stays in the blob store, and `get` extracts a held part's decoded bytes (or the whole raw
message) from it.
"""
from __future__ import annotations

import hashlib

from pipeline.blobstore import BlobStore
from pipeline.bus import Topics, read_topic
from pipeline.mail.mime import decode_body, leaf_at, walk
from pipeline.settings import Settings
from schemas.codec import DecodeError
from schemas.events import Held, Quarantined, decode_event

__all__ = ["QuarantineError", "read_quarantine", "quarantine_rows", "find_entry", "extract"]

QuarantineEntry = Held | Quarantined
MAX_DEPTH = 64  # extraction walks further than the stage's caps: a quarantined message may be deep
MAX_PARTS = 100_000


class QuarantineError(LookupError):
    """The message or part asked for is not in the quarantine (the text says what is missing)."""


async def read_quarantine(settings: Settings) -> list[QuarantineEntry]:
    """Every `held` and `quarantined` event on the quarantine topic, oldest first."""
    records = await read_topic(settings.kafka, Topics.from_settings(settings).quarantine, "quarantine-reader")
    entries = [e for e in (_entry(r.value) for r in records) if e is not None]
    return sorted(entries, key=lambda e: e.time)


def _entry(value: bytes | None) -> QuarantineEntry | None:
    try:
        event = decode_event(value or b"", expect=(Held, Quarantined))
    except DecodeError:
        return None
    return event  # type: ignore[return-value]


def quarantine_rows(entries: list[QuarantineEntry]) -> tuple[list[str], list[list]]:
    columns = ["time", "message_id", "type", "stage", "part", "filename", "reason", "recipients"]
    rows = []
    for e in entries:
        if isinstance(e, Held):
            rows.append([e.time, e.message_id, e.type, e.stage, e.part, e.filename, "; ".join(e.reasons),
                         ", ".join(e.recipients)])
        else:
            rows.append([e.time, e.message_id, e.type, e.stage, "", "", e.reason, ", ".join(e.recipients)])
    return columns, rows


def find_entry(entries: list[QuarantineEntry], message_id: str, part: str = "") -> QuarantineEntry:
    """The entry for `message_id` (the held event of `part` when there is one)."""
    mine = [e for e in entries if e.message_id == message_id]
    if not mine:
        raise QuarantineError(f"message {message_id} is not in the quarantine")
    exact = [e for e in mine if isinstance(e, Held) and e.part == part]
    return (exact or mine)[0]


def extract(blobs: BlobStore, entry: QuarantineEntry, part: str = "") -> bytes:
    """The decoded bytes of `part` of the entry's stored message; the raw message when `part` is ""."""
    raw = blobs.get(entry.message.blob)
    if not part:
        return raw
    leaf = leaf_at(walk(raw, max_depth=MAX_DEPTH, max_parts=MAX_PARTS), part)
    if leaf is None:
        raise QuarantineError(f"message {entry.message_id} has no part {part}")
    if isinstance(entry, Held) and entry.part == part and hashlib.sha256(leaf.body(raw)).hexdigest() != entry.sha256:
        raise QuarantineError(f"part {part} of message {entry.message_id} is not the part that was held")
    return decode_body(raw, leaf)
