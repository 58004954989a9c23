"""``/l/<token>``: a GET only shows, a POST acts; bad, expired, reused and other people's links."""
from __future__ import annotations

import re
import time

from pipeline.links import make_link_token
from tests.consumers.services.portal.conftest import KEY, LENA, MAX


def _link(entry: str, action: str, expires: float | None = None, key: bytes = KEY) -> str:
    return "/l/" + make_link_token(key, entry, action, time.time() + 86400 if expires is None else expires)


async def _confirm(portal, path: str):
    page = await portal.client.get(path)
    token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    return page, await portal.client.post(path, data={"csrf": token})


async def test_get_shows_what_the_link_does_and_does_nothing(portal):
    ids = portal.spam()
    page = await portal.client.get(_link(ids[LENA], "release"))
    assert page.status_code == 200 and "release this message" in page.text and 'id="confirm"' in page.text
    assert "EARN MONEY &lt;b&gt;now&lt;/b&gt;" in page.text and "winner@example.org" in page.text
    assert portal.recorder.committed == [] and portal.state.entries[ids[LENA]].open


async def test_post_releases_once_and_the_same_link_again_says_already_released(portal):
    ids = portal.spam()
    path = _link(ids[LENA], "release_learn")
    first, done = await _confirm(portal, path)
    assert done.status_code == 200 and "Released and learned" in done.text
    action = portal.state.entries[ids[LENA]].actions[-1]
    assert action.by == f"link:{LENA}" and action.learn_ham and action.token
    again = await portal.client.get(path)
    assert again.status_code == 409 and "already released" in again.text.lower()
    csrf = re.search(r'name="csrf" value="([^"]+)"', first.text).group(1)  # the same session: a double POST
    assert (await portal.client.post(path, data={"csrf": csrf})).status_code == 409
    assert len(portal.recorder.committed) == 1  # delivered once


async def test_a_link_acts_on_its_one_entry_only(portal):
    ids = portal.spam()
    path = _link(ids[LENA], "delete")
    _, done = await _confirm(portal, path)
    assert done.status_code == 200 and portal.state.entries[ids[LENA]].status == "deleted"
    assert portal.state.entries[ids[MAX]].open
    assert (await portal.client.get("/quarantine")).status_code == 303  # no session for the quarantine
    assert (await portal.client.get(f"/quarantine/{ids[MAX]}")).status_code == 303


async def test_forged_malformed_expired_and_gone_links_say_which(portal):
    ids = portal.spam()
    good = _link(ids[LENA], "release")
    cases = {
        "forged": (_link(ids[LENA], "release", key=b"x" * 32), 400, "not issued by this mail gateway"),
        "tampered": (good.replace(".release.", ".delete."), 400, "not issued by this mail gateway"),
        "malformed": ("/l/v1.nonsense", 400, "not a complete quarantine link"),
        "expired": (_link(ids[LENA], "release", expires=time.time() - 10), 410, "has expired"),
        "unknown": (_link("f" * 20, "release"), 410, "no longer in the quarantine"),
    }
    for name, (path, status, text) in cases.items():
        page = await portal.client.get(path)
        assert (name, page.status_code) == (name, status) and text in page.text, name
    assert portal.recorder.committed == []


async def test_allow_sender_and_open_links(portal):
    ids = portal.spam()
    _, done = await _confirm(portal, _link(ids[LENA], "allow_sender"))
    assert done.status_code == 200 and (await portal.portal.users.prefs(LENA)).allows("winner@example.org")
    assert portal.portal.users.own[LENA].by == f"link:{LENA}" and portal.state.entries[ids[LENA]].open
    page = await portal.client.get(_link(ids[LENA], "open"))
    assert page.status_code == 200 and "Work from home!" in page.text and 'id="confirm"' not in page.text


async def test_a_release_link_for_a_held_attachment_only_requests(portal):
    held = portal.exe()
    page, done = await _confirm(portal, _link(held, "release"))
    assert "ask an administrator" in page.text
    assert done.status_code == 200 and portal.state.entries[held].status == "requested"
    assert all(t == ["poststelle.quarantine"] for t in portal.transactions())
