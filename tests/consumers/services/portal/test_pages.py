"""The portal's pages through its real ASGI application: sign-in, rate limit, CSRF, ownership,
actions, settings, admin, headers. (Links: test_links.py.)"""
from __future__ import annotations

import re

from consumers.services.portal.security import CSP
from tests.consumers.services.portal.conftest import ADMIN, LENA, MAX, PASSWORDS


async def test_sign_in_shows_only_my_entries(portal):
    ids = portal.spam()
    other = portal.spam(recipients=(MAX,), subject="only for max")
    assert (await portal.client.get("/quarantine")).headers["location"].startswith("/login")
    reply = await portal.sign_in("lena.mueller")
    assert reply.status_code == 303 and reply.headers["location"] == "/quarantine"
    page = await portal.client.get("/quarantine")
    assert page.status_code == 200 and ids[LENA] in page.text
    assert ids[MAX] not in page.text and list(other.values())[0] not in page.text and "only for max" not in page.text
    assert "EARN MONEY &lt;b&gt;now&lt;/b&gt;" in page.text  # the subject is text, escaped


async def test_wrong_password_and_the_rate_limit_after_five(portal):
    for _ in range(5):
        reply = await portal.sign_in("lena.mueller", "wrong")
        assert reply.status_code == 401 and "Wrong login or password" in reply.text
    binds = portal.accounts.binds
    reply = await portal.sign_in("lena.mueller")  # the right password, too late
    assert reply.status_code == 429 and "Too many wrong passwords" in reply.text
    assert portal.accounts.binds == binds  # the directory was not asked
    assert (await portal.sign_in("max.mustermann")).status_code == 429  # the same client address


async def test_the_rate_limit_counts_per_login_across_addresses(tmp_path):
    from tests.consumers.services.portal.conftest import make_harness
    import httpx
    harness, closing = make_harness(tmp_path)
    await harness.portal.users.start(1)
    await harness.portal.view.start(1)
    try:
        for n in range(5):  # each wrong password from another address
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=harness.client._transport.app,
                                                                     client=(f"192.0.2.{n + 20}", 1)),
                                       base_url="http://127.0.0.1:8025")
            harness.client = client
            assert (await harness.sign_in("lena.mueller", "wrong")).status_code == 401
        assert (await harness.sign_in("lena.mueller")).status_code == 429
        assert (await harness.sign_in("max.mustermann")).status_code == 303  # another login from there is fine
    finally:
        for thing in reversed(closing):
            await (thing.aclose() if hasattr(thing, "aclose") else thing.close())


async def test_every_post_needs_the_session_csrf_token(portal):
    ids = portal.spam()
    assert (await portal.client.post("/login", data={"login": "lena.mueller", "password": PASSWORDS["lena.mueller"]})
            ).status_code == 403
    await portal.sign_in("lena.mueller")
    for data in ({}, {"csrf": "forged"}):
        reply = await portal.client.post(f"/quarantine/{ids[LENA]}/release", data=data)
        assert reply.status_code == 403 and "not sent from this portal" in reply.text
    assert portal.recorder.committed == [] and portal.state.entries[ids[LENA]].status == "held"


async def test_another_users_entry_is_404_to_see_and_to_act_on(portal):
    ids = portal.spam()
    await portal.sign_in("lena.mueller")
    missing = await portal.client.get("/quarantine/" + "0" * 20)
    theirs = await portal.client.get(f"/quarantine/{ids[MAX]}")
    assert missing.status_code == theirs.status_code == 404
    for action in ("release", "delete", "allow_sender", "request"):
        assert (await portal.post(f"/quarantine/{ids[MAX]}/{action}")).status_code == 404
    assert (await portal.client.get("/admin")).status_code == 404  # and no admin
    assert (await portal.post("/admin/bulk", {"action": "delete", "entries[]": ids[MAX]})).status_code == 404
    assert portal.recorder.committed == [] and portal.state.entries[ids[MAX]].open


async def test_preview_is_text_and_release_delivers_once(portal):
    ids = portal.spam()
    await portal.sign_in("lena.mueller")
    page = await portal.client.get(f"/quarantine/{ids[LENA]}")
    assert page.status_code == 200
    preview = re.search(r'<pre class="text" id="preview-text">(.*?)</pre>', page.text, re.S).group(1)
    assert "Work from home!" in preview
    assert "<script" not in page.text and "<img" not in page.text and "192.0.2.55" not in page.text
    assert page.headers["content-security-policy"] == CSP
    assert page.headers["x-content-type-options"] == "nosniff" and page.headers["referrer-policy"] == "no-referrer"

    reply = await portal.post(f"/quarantine/{ids[LENA]}/release_learn", page=f"/quarantine/{ids[LENA]}")
    assert reply.status_code == 303
    assert portal.transactions() == [["poststelle.checked.spam", "poststelle.quarantine", "poststelle.spam.learn"]]
    entry = portal.state.entries[ids[LENA]]
    assert entry.status == "released" and entry.actions[-1].by == f"portal:{LENA}" and entry.actions[-1].learn_ham
    done = await portal.client.get(reply.headers["location"])
    assert "Released and learned as not spam" in done.text
    again = await portal.post(f"/quarantine/{ids[LENA]}/release", page=f"/quarantine/{ids[LENA]}")
    assert "released already" in (await portal.client.get(again.headers["location"])).text
    assert len(portal.recorder.committed) == 1  # nothing delivered twice


async def test_filters_and_sorting(portal):
    first = portal.spam(recipients=(LENA,), subject="alpha offer")
    second = portal.spam(recipients=(LENA,), subject="beta offer")
    await portal.sign_in("lena.mueller")
    page = (await portal.client.get("/quarantine", params={"q": "beta"})).text
    assert first[LENA] not in page and second[LENA] in page
    await portal.post(f"/quarantine/{first[LENA]}/delete")
    assert first[LENA] not in (await portal.client.get("/quarantine")).text  # open ones by default
    assert first[LENA] in (await portal.client.get("/quarantine", params={"status": "deleted"})).text
    assert (await portal.client.get("/quarantine", params={"sort": "sender", "category": "spam"})).status_code == 200


async def test_sender_lists_and_settings_are_the_users_own_values(portal):
    ids = portal.spam()
    await portal.sign_in("lena.mueller")
    await portal.post(f"/quarantine/{ids[LENA]}/allow_sender")
    assert (await portal.portal.users.prefs(LENA)).allows("winner@example.org")
    await portal.post(f"/quarantine/{ids[LENA]}/block_sender")
    prefs = await portal.portal.users.prefs(LENA)
    assert prefs.blocks("winner@example.org") and not prefs.allows("winner@example.org")

    reply = await portal.post("/settings", {"quarantine": "on", "digest": "weekly", "allow_senders": "@partner.example",
                                            "block_senders": "winner@example.org"}, page="/settings")
    assert reply.status_code == 303
    prefs = await portal.portal.users.prefs(LENA)
    assert (prefs.quarantine, prefs.digest, prefs.allow_senders) == (True, "weekly", ("@partner.example",))
    last = portal.portal.users.own[LENA]
    assert last.by == f"portal:{LENA}" and last.changed == ["quarantine", "digest", "allow_senders"]
    bad = await portal.post("/settings", {"digest": "daily", "allow_senders": "not an address"}, page="/settings")
    assert bad.status_code == 400 and "allow_senders" in bad.text
    assert portal.portal.users.own[LENA] is last  # nothing written


async def test_held_attachment_is_requested_by_the_user_and_approved_by_an_admin(portal):
    held = portal.exe()
    await portal.sign_in("max.mustermann")
    page = await portal.client.get(f"/quarantine/{held}")
    assert 'id="request"' in page.text and 'id="release"' not in page.text and "a.exe" in page.text
    await portal.post(f"/quarantine/{held}/release")  # for this category a release is a request
    assert portal.state.entries[held].status == "requested" and portal.recorder.committed[-1][0][0].endswith(
        "quarantine")

    await portal.sign_in("it.admin")
    admin = await portal.client.get("/admin")
    assert admin.status_code == 200 and held in admin.text and 'id="requests"' in admin.text
    await portal.post(f"/admin/entry/{held}/approve", page="/admin")
    entry = portal.state.entries[held]
    assert entry.status == "released" and entry.actions[-1].by == f"admin:{ADMIN}"
    assert portal.transactions()[-1] == ["poststelle.checked.attachment", "poststelle.quarantine"]


async def test_admin_bulk_release_and_delete_and_the_size(portal):
    spam = portal.spam()
    held = portal.exe()
    await portal.sign_in("it.admin")
    page = (await portal.client.get("/admin")).text
    assert re.search(r'id="open-entries">3<', page)
    reply = await portal.post("/admin/bulk", {"action": "release", "entries[]": [spam[LENA], held]}, page="/admin")
    assert "Released 2 of 2" in (await portal.client.get(reply.headers["location"])).text
    await portal.post("/admin/bulk", {"action": "delete", "entries[]": [spam[MAX], spam[LENA]]}, page="/admin")
    statuses = {k: portal.state.entries[k].status for k in (spam[LENA], spam[MAX], held)}
    assert statuses == {spam[LENA]: "released", spam[MAX]: "deleted", held: "released"}
    assert re.search(r'id="open-entries">0<', (await portal.client.get("/admin")).text)


async def test_session_cookie_flags(tmp_path):
    from pipeline.quarantine_settings import WebSettings
    from tests.consumers.services.portal.conftest import make_harness
    harness, closing = make_harness(tmp_path, web=WebSettings(secure_cookies=True))
    try:
        cookie = (await harness.client.get("/login")).headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie and "secure" in cookie
    finally:
        await closing[2].aclose()


async def test_bodies_are_bounded_and_sign_out_ends_the_session(portal):
    await portal.sign_in("lena.mueller")
    big = await portal.client.post("/settings", content=b"x" * 300_000,
                                   headers={"content-type": "application/x-www-form-urlencoded"})
    assert big.status_code == 413
    await portal.post("/logout")
    assert (await portal.client.get("/quarantine")).status_code == 303


async def test_an_admin_denies_a_request_and_the_entry_stays_held(portal):
    held = portal.exe()
    await portal.sign_in("max.mustermann")
    await portal.post(f"/quarantine/{held}/request")
    await portal.sign_in("it.admin")
    reply = await portal.post(f"/admin/entry/{held}/deny", page="/admin")
    assert "Request denied" in (await portal.client.get(reply.headers["location"])).text
    entry = portal.state.entries[held]
    assert entry.status == "held" and [a.action for a in entry.actions] == ["request_release", "deny"]
    assert entry.actions[-1].by == f"admin:{ADMIN}"


async def test_kafka_not_answering_is_said_and_nothing_changes(portal):
    from aiokafka.errors import KafkaTimeoutError

    class Gone:  # the producer is abandoned after a failed transaction: what aiokafka's has for that
        async def close(self) -> None: ...

    async def fail() -> None:
        raise KafkaTimeoutError()

    ids = portal.spam()
    await portal.sign_in("lena.mueller")
    portal.recorder.commit_transaction = fail
    portal.recorder._sender, portal.recorder.client = None, Gone()
    reply = await portal.post(f"/quarantine/{ids[LENA]}/release")
    assert "the mail system did not answer" in (await portal.client.get(reply.headers["location"])).text
    assert portal.state.entries[ids[LENA]].status == "held" and portal.recorder.committed == []


async def test_sign_in_goes_back_only_to_a_path_of_the_portal(portal):
    for wanted, landed in (("/settings", "/settings"), ("//evil.example/x", "/quarantine"),
                           ("https://evil.example/", "/quarantine")):
        token = await portal.csrf(f"/login?next={wanted}")
        reply = await portal.client.post("/login", data={"csrf": token, "login": "lena.mueller", "next": wanted,
                                                         "password": PASSWORDS["lena.mueller"]})
        assert reply.headers["location"] == landed


async def test_a_directory_that_does_not_answer_is_a_503_not_a_wrong_password(portal):
    from pipeline.clients.directory import DirectoryUnavailable

    async def down(login: str, password: str):
        raise DirectoryUnavailable("ldap://127.0.0.1:1: no answer")

    portal.accounts.authenticate = down
    for _ in range(6):
        reply = await portal.sign_in("lena.mueller")
        assert reply.status_code == 503 and "does not answer" in reply.text  # and never counted as a failure
