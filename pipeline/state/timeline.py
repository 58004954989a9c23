"""A message's timeline, from the event log: "why was this held, and what happened to it since?"

Given one message id and a pool of events (read from the analytics store or straight from the
topics: `pipeline.state.timeline_source`), `build_timeline` picks the events that belong to the
message and orders them into steps (`timeline_words` says what each one means):

- the **SMTP session** that brought it: the connection, the checks' results, refusals of the same
  transaction (same session, same envelope sender, up to its acceptance);
- for **greylisting**, the earlier refused attempts of the same client, sender and recipient from
  other sessions, back to the last time that triplet passed (those belong to an earlier message);
- everything with the message's id: `received`, each stage's result with its verdict, score, details,
  duration, edits and replacements, `routed`, delivery attempts, `delivered` / `deferred` /
  `bounced`, `rejected`, `quarantined`, `held`, dead letters;
- its **quarantine entries**' actions (`quarantine_action`: requested, approved, released, deleted,
  expired, and by whom), the digests that listed them (`digest_sent`), and, followed through
  `released_as`, the steps of the released copy up to its delivery. The `stage_result` a release
  writes to send the copy on is shown as that, right after the release (not as the holding stage
  deciding again).

Steps are ordered by event time, then by id: ids made in one process sort in creation order even
within one millisecond (`schemas.ids.new_id`), and across processes each hop comes after the one
it consumed. What to load for a message is the same question as what to pick, so `Leads` answers
both (the source queries by it, the builder selects by it).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pipeline.state.quarantine import entry_id
from pipeline.state.timeline_words import Words, describe, plain
from schemas.events import (
    Event,
    Held,
    Quarantined,
    Received,
    SmtpCheck,
    SmtpConnect,
    SmtpReject,
    StageResult,
    epoch_from_iso,
)
from schemas.quarantine import DigestSent, QuarantineAction

__all__ = ["Step", "Timeline", "Leads", "leads_of", "build_timeline", "GREYLIST_PASSES", "SESSION_PHASES"]

GREYLIST_PASSES = ("passed", "passed_after_retry", "auto_whitelisted", "whitelisted")
SESSION_PHASES = ("connect", "helo", "auth")  # checks before MAIL FROM belong to every transaction
SMTP_EVENTS = (SmtpConnect, SmtpCheck, SmtpReject)


@dataclass(frozen=True, slots=True)
class Step:
    """One thing that happened to the message: when, which component, what (for users), details (admins)."""

    time: str
    component: str
    summary: str
    details: dict[str, Any]
    type: str  # the event type
    message_id: str  # "" for SMTP session events before the message had an id
    event_id: str

    def as_dict(self) -> dict[str, Any]:
        return {"time": self.time, "component": self.component, "summary": self.summary, "details": self.details,
                "type": self.type, "message_id": self.message_id, "event_id": self.event_id}


@dataclass(frozen=True, slots=True)
class Timeline:
    """The steps of one message (and of its released copies, `copies`), oldest first."""

    message_id: str
    steps: list[Step]
    copies: list[str] = field(default_factory=list)
    subject: str = ""
    sender: str = ""
    recipients: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"message_id": self.message_id, "subject": self.subject, "sender": self.sender,
                "recipients": self.recipients, "copies": self.copies, "steps": [s.as_dict() for s in self.steps]}


@dataclass(frozen=True, slots=True)
class Leads:
    """What the events of a message point to, beyond its own id."""

    received: Received | None
    entries: frozenset[str]  # quarantine entry ids of its quarantined / held events
    released_as: frozenset[str]  # message ids of released copies (other than its own)

    @property
    def session_id(self) -> str:
        return self.received.session_id if self.received else ""


def leads_of(message_id: str, events: Iterable[Event]) -> Leads:
    """The leads in the events carrying `message_id` (other events in `events` are ignored)."""
    received: Received | None = None
    entries: set[str] = set()
    released: set[str] = set()
    for e in events:
        if e.message_id != message_id:
            continue
        if isinstance(e, Received) and (received is None or e.time < received.time):
            received = e
        elif isinstance(e, (Quarantined, Held)):
            entries.update(entry_id(e.id, r) for r in e.recipients)
        elif isinstance(e, QuarantineAction) and e.released_as and e.released_as != message_id:
            released.add(e.released_as)
    return Leads(received, frozenset(entries), frozenset(released))


def _session_events(received: Received, pool: list[Event]) -> list[Event]:
    """The accepting session's connection and checks: before MAIL FROM, and those of this transaction."""
    rcpts = set(received.envelope.rcpt_to)
    chosen: list[Event] = []
    for e in pool:
        if not isinstance(e, SMTP_EVENTS) or e.session_id != received.session_id or e.time > received.time:
            continue
        if isinstance(e, SmtpConnect) or e.phase in SESSION_PHASES:
            chosen.append(e)
        elif e.sender == received.envelope.mail_from and (isinstance(e, SmtpReject) or not e.recipient
                                                          or e.recipient in rcpts):
            chosen.append(e)
    return chosen


def _greylist_attempts(received: Received, pool: list[Event]) -> list[Event]:
    """Refusals by greylisting of the same client, sender and recipient in earlier sessions, after the
    triplet last passed (earlier refusals were another message's)."""
    chosen: list[Event] = []
    for rcpt in received.envelope.rcpt_to:
        same = [e for e in pool if isinstance(e, (SmtpCheck, SmtpReject)) and e.check == "greylist"
                and e.client_ip == received.client.ip and e.sender == received.envelope.mail_from
                and e.recipient == rcpt and e.session_id != received.session_id and e.time < received.time]
        passes = [e.time for e in same if isinstance(e, SmtpCheck) and e.result in GREYLIST_PASSES]
        since = max(passes, default="")
        chosen.extend(e for e in same if isinstance(e, SmtpReject) and e.time > since)
    return chosen


RELEASE_ACTIONS = ("release", "approve")
COPY_WINDOW = 60.0  # seconds: a release writes its copy and its action in one transaction


def _released_copies(events: list[Event]) -> dict[str, QuarantineAction]:
    """The `stage_result` each release wrote to send its copy on (event id → the release action).

    The copy is made just before its action (so its id and time may sort first); it is shown after it,
    at the action's time, as what the release did, not as the holding stage deciding again."""
    copies: dict[str, QuarantineAction] = {}
    for action in events:
        if not isinstance(action, QuarantineAction) or action.action not in RELEASE_ACTIONS:
            continue
        stage = action.topic.rpartition(".checked.")[2] if ".checked." in action.topic else ""
        for e in events:
            if (isinstance(e, StageResult) and e.message_id == action.released_as and e.result.stage == stage
                    and e.recipients == [action.recipient] and e.id not in copies
                    and abs(epoch_from_iso(e.time) - epoch_from_iso(action.time)) <= COPY_WINDOW):
                copies[e.id] = action
                break
    return copies


def _copy_words(e: StageResult, action: QuarantineAction) -> Words:
    return Words(e.result.stage, f"The released copy for {action.recipient} goes on after the {e.result.stage} check",
                 {"released_by": action.by, "entry": action.entry, "recipients": list(e.recipients),
                  "edits": plain(e.edits)})


def build_timeline(message_id: str, pool: Iterable[Event]) -> Timeline:
    """The timeline of `message_id` from `pool` (which may hold unrelated events: they are left out)."""
    events = list({e.id: e for e in pool}.values())
    chosen: dict[str, Event] = {}
    todo, seen, copies = [message_id], set(), []
    first: Received | None = None
    while todo:
        mid = todo.pop(0)
        if mid in seen:
            continue
        seen.add(mid)
        leads = leads_of(mid, events)
        first = first or leads.received
        mine = [e for e in events if e.message_id == mid and describe(e) is not None]
        mine += [e for e in events if isinstance(e, QuarantineAction) and e.entry in leads.entries]
        mine += [e for e in events if isinstance(e, DigestSent) and leads.entries & set(e.entries)]
        if leads.received is not None:
            mine += _session_events(leads.received, events) + _greylist_attempts(leads.received, events)
        chosen.update((e.id, e) for e in mine)
        for copy in sorted(leads.released_as - seen):
            copies.append(copy)
            todo.append(copy)
    copies_of = _released_copies(list(chosen.values()))

    def order(e: Event) -> tuple[str, str, str]:
        action = copies_of.get(e.id)
        return (action.time, action.id, e.id) if action else (e.time, e.id, "")

    steps = []
    for e in sorted(chosen.values(), key=order):
        words = _copy_words(e, copies_of[e.id]) if e.id in copies_of else describe(e)  # type: ignore[arg-type]
        if words is not None:  # a released copy goes on when its release commits: it shows the release's time
            steps.append(Step(order(e)[0], words.component, words.summary, words.details, e.type,  # type: ignore[attr-defined]
                              e.message_id, e.id))
    return Timeline(message_id=message_id, steps=steps, copies=copies,
                    subject=first.headers.subject if first else "",
                    sender=first.envelope.mail_from if first else "",
                    recipients=list(first.envelope.rcpt_to) if first else [])
