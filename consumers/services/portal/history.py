"""An entry's timeline on its page: the message's path from the event log (`pipeline.state.timeline`).

The steps come from the analytics store (`AnalyticsSource`, the same as `poststelle trace`), in
words a user understands; admins also see each step's details. What a user sees is cut to what is
theirs: a step whose words name an address other than their own or the message's sender (a
delivery to another recipient, the acceptance of a message that also went to a Bcc recipient) is
left out, so the timeline shows nobody else's mail.

The store is about a second behind the log, and may not answer at all (the analytics sink down):
the quarantine's own record of the entry (held, then each action, from the state this process
follows) fills in what the store does not have yet, or stands alone, with a note saying so.
"""
from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable

import orjson

from consumers.services.portal.preview import TimelineLine, entry_timeline
from pipeline.clients.analytics import AnalyticsUnavailable, QueryError
from pipeline.state.quarantine import Entry
from pipeline.state.timeline import Step
from pipeline.state.timeline_source import EventSource, message_timeline

__all__ = ["timeline_of", "STORE_TIMEOUT", "UNAVAILABLE"]

log = logging.getLogger(__name__)

STORE_TIMEOUT = 5.0  # seconds the page waits for the store; then it shows the quarantine's own record
UNAVAILABLE = "timeline.unavailable"  # the note's key in `texts`
_ADDRESS = re.compile(r"[\w.+'-]+@[\w-]+(?:\.[\w-]+)+", re.ASCII)
_ACTOR = re.compile(r"\bby \S+")  # "... by admin:it.admin@school.test": who acted, not whose mail


def _addresses(text: str) -> set[str]:
    return {a.lower() for a in _ADDRESS.findall(_ACTOR.sub("", text))}


def _theirs(step: Step, allowed: set[str]) -> bool:
    return _addresses(step.summary) <= allowed


def _details(details: dict) -> str:
    shown = {k: v for k, v in details.items() if v not in ("", [], {}, None)}
    return orjson.dumps(shown, default=str).decode() if shown else ""


async def _steps(events: EventSource, message_id: str) -> list[Step] | None:
    """The message's steps from the store, or None when it does not answer in time."""
    try:
        timeline = await asyncio.wait_for(asyncio.to_thread(message_timeline, events, message_id), STORE_TIMEOUT)
    except (AnalyticsUnavailable, QueryError, OSError, TimeoutError) as exc:
        log.info("timeline of %s: the analytics store did not answer (%s)", message_id, exc)
        return None
    return timeline.steps


async def timeline_of(events: EventSource | None, entry: Entry, viewer_addresses: Iterable[str],
                      admin: bool, lang: str = "en") -> tuple[list[TimelineLine], str]:
    """The lines of the entry's timeline, and a note (a key of `texts`) when the store could not be asked.
    The quarantine's own lines are in `lang`; the store's steps are `pipeline.state.timeline_words`'s English."""
    own = entry_timeline(entry, lang)
    if events is None:
        return own, ""
    steps = await _steps(events, entry.message_id)
    if steps is None:
        return own, UNAVAILABLE
    if not admin:
        allowed = {a.lower() for a in viewer_addresses} | _addresses(entry.sender) | _addresses(entry.header_from)
        steps = [s for s in steps if _theirs(s, allowed)]
    lines = [TimelineLine(s.time, s.summary, _details(s.details) if admin else "") for s in steps]
    known = {s.event_id for s in steps}
    missing = [line for line, action in zip(own[1:], entry.actions) if action.id not in known]  # not in the store yet
    if not any(s.type in ("quarantined", "held") for s in steps):
        missing.insert(0, own[0])
    return sorted(lines + missing, key=lambda line: line.time), ""
