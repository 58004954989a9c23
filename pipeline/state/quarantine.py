"""The quarantine as state of its own: one entry per held message (or held part) and recipient.

Folded from the quarantine topic (``<prefix>.quarantine``), which holds what stages held
(`quarantined`: a whole message for some recipients; `held`: one part, the rest delivered) and what
happened to it since (`quarantine_action`: release, request, approval, denial, deletion, expiry;
`digest_sent`: which entries a user was mailed). Every reader folds the same log, so the portal,
the digest service and the CLI agree, and the state can always be rebuilt.

Held messages are never copied: the original stays in the blob store. `extract` gets a held part's
decoded bytes (or the whole raw message) back out of it.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from pipeline.blobstore import BlobStore
from pipeline.bus import Topics, read_topic
from pipeline.mail.mime import decode_body, leaf_at, walk
from pipeline.settings import Settings
from pipeline.tables import Follower, KafkaTransport, Transport
from schemas.codec import DecodeError
from schemas.events import DigestSent, Held, QuarantineAction, Quarantined, decode_event, epoch_from_iso, iso_from_epoch

__all__ = ["QuarantineError", "Entry", "QuarantineState", "QuarantineView", "entry_id", "category_of",
           "read_quarantine_state", "read_quarantine", "find_entry", "extract"]

log = logging.getLogger(__name__)

QuarantineEntry = Held | Quarantined
MAX_DEPTH = 64  # extraction walks further than the stage's caps: a quarantined message may be deep
MAX_PARTS = 100_000
OPEN = ("held", "requested")
# what an action makes of an entry's status
_STATUS = {"release": "released", "approve": "released", "request_release": "requested", "deny": "held",
           "delete": "deleted", "expire": "expired"}


class QuarantineError(LookupError):
    """The message or part asked for is not in the quarantine (the text says what is missing)."""


def entry_id(event_id: str, recipient: str) -> str:
    """The stable id of the entry of one `quarantined`/`held` event for one recipient (20 hex chars)."""
    return hashlib.sha256(f"{event_id}/{recipient.lower()}".encode()).hexdigest()[:20]


def category_of(event: QuarantineEntry) -> str:
    """What the entry is held for: spam, attachment, virus (a scan limit), dmarc, rejected (a late
    rejection), other. `[quarantine] approval` names the categories only an admin may release."""
    if isinstance(event, Held) or event.stage == "attachment":
        return "attachment"
    if event.reason.startswith("late rejection"):
        return "dmarc" if "dmarc" in event.reason.lower() else "rejected"
    return {"spam": "spam", "virus": "virus", "auth": "dmarc"}.get(event.stage, "other")


@dataclass(slots=True)
class Entry:
    id: str
    message_id: str
    recipient: str
    kind: str  # "message" | "part"
    category: str
    stage: str
    reason: str
    score: float | None
    sender: str  # the envelope sender
    header_from: str
    subject: str
    size: int
    time: str
    expires: str
    event: QuarantineEntry
    needs_approval: bool = False
    part: str = ""
    filename: str = ""
    status: str = "held"  # held | requested | released | deleted | expired
    actions: list[QuarantineAction] = field(default_factory=list)

    @property
    def open(self) -> bool:
        """Still in the quarantine: held, or a release requested and not yet decided."""
        return self.status in OPEN

    @property
    def released_as(self) -> str:
        return next((a.released_as for a in reversed(self.actions) if a.released_as), "")


def _score(event: QuarantineEntry) -> float | None:
    if isinstance(event, Held):
        return None
    own = [r for r in event.results if r.stage == event.stage]
    return own[-1].score if own and event.stage == "spam" else None


class QuarantineState:
    """The fold: entries by id, and which entries were in a digest. Applying an event twice is harmless."""

    def __init__(self, lifetime: float, approval: Iterable[str]) -> None:
        self.lifetime = lifetime
        self.approval = frozenset(approval)
        self.entries: dict[str, Entry] = {}
        self.digested: dict[str, set[str]] = {}  # user → entry ids listed in a digest to them
        self._in_digest: set[str] = set()
        self._seen_actions: set[str] = set()

    @classmethod
    def from_settings(cls, settings: Settings) -> QuarantineState:
        return cls(settings.quarantine.lifetime_seconds, settings.quarantine.approval)

    def apply(self, _table: str, _key: str, value: bytes | None) -> None:
        """`pipeline.tables` apply: one record of the quarantine topic."""
        if value is None:
            return
        try:
            event = decode_event(value, expect=(Quarantined, Held, QuarantineAction, DigestSent))
        except DecodeError as exc:
            log.warning("quarantine: ignoring a record: %s", exc)
            return
        self.apply_event(event)  # type: ignore[arg-type]

    def apply_event(self, event: Quarantined | Held | QuarantineAction | DigestSent) -> None:
        if isinstance(event, QuarantineAction):
            self._act(event)
        elif isinstance(event, DigestSent):
            self.digested.setdefault(event.user, set()).update(event.entries)
            self._in_digest.update(event.entries)
        else:
            for recipient in dict.fromkeys(event.recipients):
                key = entry_id(event.id, recipient)
                if key not in self.entries:
                    self.entries[key] = self._entry(key, event, recipient)

    def _entry(self, key: str, event: QuarantineEntry, recipient: str) -> Entry:
        category = category_of(event)
        message = event.message
        is_part = isinstance(event, Held)
        return Entry(
            id=key, message_id=event.message_id, recipient=recipient, kind="part" if is_part else "message",
            category=category, stage=event.stage,
            reason="; ".join(event.reasons) if is_part else event.reason,  # type: ignore[union-attr]
            score=_score(event), sender=message.envelope.mail_from, header_from=message.headers.header_from,
            subject=message.headers.subject, size=message.blob.size, time=event.time,
            expires=iso_from_epoch(epoch_from_iso(event.time) + self.lifetime), event=event,
            needs_approval=category in self.approval,
            part=event.part if is_part else "", filename=event.filename if is_part else "",  # type: ignore[union-attr]
        )

    def _act(self, action: QuarantineAction) -> None:
        entry = self.entries.get(action.entry)
        if entry is None or action.id in self._seen_actions:
            return
        self._seen_actions.add(action.id)
        entry.actions.append(action)
        if action.action == "request_release" and not entry.open:
            return  # a request that lost a race against a release or deletion changes nothing
        entry.status = _STATUS[action.action]

    # -- questions ------------------------------------------------------------------------------

    def for_recipient(self, *addresses: str) -> list[Entry]:
        """The entries of these addresses (a user's primary address and aliases), newest first."""
        wanted = {a.lower() for a in addresses}
        return sorted((e for e in self.entries.values() if e.recipient.lower() in wanted),
                      key=lambda e: e.time, reverse=True)

    def by_message(self, message_id: str) -> list[Entry]:
        return [e for e in self.entries.values() if e.message_id == message_id or e.released_as == message_id]

    def undigested(self, *addresses: str) -> list[Entry]:
        """Open entries of these addresses that no digest listed yet, oldest first."""
        return sorted((e for e in self.for_recipient(*addresses) if e.open and e.id not in self._in_digest),
                      key=lambda e: e.time)

    def expired(self, now: float) -> list[Entry]:
        """Open entries whose lifetime is over."""
        return [e for e in self.entries.values() if e.open and epoch_from_iso(e.expires) <= now]

    def search(self, *, recipient: str | None = None, category: str | None = None, status: str | None = None,
               older_than: float | None = None, text: str | None = None, now: float | None = None) -> list[Entry]:
        """Entries matching every filter given, newest first. `older_than`: seconds before `now`;
        `text`: a case-insensitive substring of the sender, From, subject, reason or message id;
        `status` "open" means held or requested."""
        found = []
        needle = (text or "").lower()
        for e in self.entries.values():
            if recipient and e.recipient.lower() != recipient.lower():
                continue
            if category and e.category != category:
                continue
            if status and not (e.open if status == "open" else e.status == status):
                continue
            if older_than is not None and now is not None and epoch_from_iso(e.time) > now - older_than:
                continue
            if needle and not any(needle in v.lower() for v in (e.sender, e.header_from, e.subject, e.reason,
                                                               e.message_id, e.recipient, e.id)):
                continue
            found.append(e)
        return sorted(found, key=lambda e: e.time, reverse=True)


class QuarantineView:
    """A process's copy of the quarantine state, kept current by following the whole topic."""

    def __init__(self, settings: Settings, client_id: str, transport: Transport | None = None) -> None:
        topic = Topics.from_settings(settings).quarantine
        self.state = QuarantineState.from_settings(settings)
        if transport is None:
            transport = KafkaTransport(settings.kafka, {"quarantine": topic}, f"{client_id}-quarantine")
        self._follower = Follower(transport, self.state.apply, label=f"{client_id}-quarantine")

    @property
    def ready(self) -> bool:
        return self._follower.ready

    async def start(self, timeout: float = 15.0) -> bool:
        return await self._follower.start(timeout)

    async def close(self) -> None:
        await self._follower.close()


async def read_quarantine_state(settings: Settings) -> QuarantineState:
    """The state as of now, read once (for a CLI command)."""
    state = QuarantineState.from_settings(settings)
    records = await read_topic(settings.kafka, Topics.from_settings(settings).quarantine, "quarantine-reader")
    for record in records:
        state.apply("quarantine", "", record.value)
    return state


# -- the held events themselves (`poststelle quarantine get`) ----------------------------------


async def read_quarantine(settings: Settings) -> list[QuarantineEntry]:
    """Every `held` and `quarantined` event on the quarantine topic, oldest first."""
    state = await read_quarantine_state(settings)
    events = {e.event.id: e.event for e in state.entries.values()}
    return sorted(events.values(), key=lambda e: e.time)


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
