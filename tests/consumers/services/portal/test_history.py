"""An entry's timeline on its page: the message's steps from the event log, cut to what is the
user's own; details for admins; the quarantine's own record when the store lags or is away."""
from __future__ import annotations

import re

from pipeline.clients.analytics import AnalyticsUnavailable
from schemas.events import Delivered, QuarantineAction, Quarantined, Reply
from tests.pipeline.state.timeline_scenario import MID, at, scenario

MAX = "max.mustermann@school.test"


class Store:
    """The event log as the analytics store answers for one message (or does not)."""

    def __init__(self, events: list, down: bool = False) -> None:
        self.events, self.down, self.asked = events, down, 0

    def find(self, request) -> list[str]:
        return [request.message_id]

    def pool(self, message_id: str) -> list:
        self.asked += 1
        if self.down:
            raise AnalyticsUnavailable("nothing answers on 127.0.0.1:18123")
        return list(self.events)


def _setup(portal, down: bool = False) -> tuple[str, Store]:
    s = scenario()
    to_max = Delivered(message_id=MID, time=at(5.4), destination="lmtp", recipient=MAX, attempt=1,
                       reply=Reply(code=250, enhanced="2.0.0", text="Saved"))  # a Bcc copy that was not held
    store = Store([*s.events, to_max], down=down)
    portal.portal.events = store
    for event in s.events:
        if isinstance(event, (Quarantined, QuarantineAction)):
            portal.state.apply_event(event)
    return s.entry, store


def _timeline(page: str) -> list[str]:
    section = page[page.index('<section class="timeline">'):]
    return [re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", li)).strip() for li in re.findall(r"<li>(.*?)</li>", section, re.S)]


async def test_a_user_sees_the_steps_of_their_message_and_nobody_elses(portal):
    entry, store = _setup(portal)
    await portal.sign_in("lena.mueller")
    lines = _timeline((await portal.client.get(f"/quarantine/{entry}")).text)
    text = "\n".join(lines)
    assert store.asked == 1
    assert "Greylisted for lena.mueller@school.test" in lines[0]
    assert "Held in quarantine by the spam check" in text and "Released for lena.mueller@school.test" in text
    assert text.index("Held in quarantine") < text.index("Released for") < text.index("Delivered to lena")
    assert MAX not in text and "engine" not in text  # another recipient's delivery; no details for users


async def test_an_admin_sees_every_step_with_its_details(portal):
    entry, _ = _setup(portal)
    await portal.sign_in("it.admin")
    page = (await portal.client.get(f"/admin/entry/{entry}")).text
    text = "\n".join(_timeline(page))
    assert f"Delivered to {MAX}" in text and "clamd" in text and 'class="muted detail"' in page


async def test_without_the_store_the_quarantines_own_record_and_a_note(portal):
    entry, _ = _setup(portal, down=True)
    await portal.sign_in("lena.mueller")
    page = (await portal.client.get(f"/quarantine/{entry}")).text
    assert "full path is not available right now" in page
    lines = _timeline(page)
    assert len(lines) == 2 and "held by the spam check" in lines[0] and "released" in lines[1]


async def test_an_action_the_store_has_not_seen_yet_is_shown_from_the_state(portal):
    entry, store = _setup(portal)
    later = QuarantineAction(message_id=MID, time=at(120), entry=entry, recipient="lena.mueller@school.test",
                             action="delete", by="portal:lena.mueller@school.test")
    portal.state.entries[entry].status = "held"  # (released in the scenario; a delete needs an open entry)
    portal.state.apply_event(later)
    await portal.sign_in("lena.mueller")
    lines = _timeline((await portal.client.get(f"/quarantine/{entry}")).text)
    assert "deleted by lena.mueller@school.test in the portal" in lines[-1]
