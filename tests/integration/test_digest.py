"""The quarantine digest against the real stack (the issue's first acceptance point).

A spam for lena (quarantine on) is held, not delivered: one entry. `poststelle digest send` mails
her one digest through the pipeline (the stages let it through untouched: no spam tag, not held);
its release link, followed, delivers the spam to her maildir once; followed again it does nothing
more; a second digest run does not list the entry again.

The link is followed as a person follows it: the portal's `/l/<token>` page (GET: what it will do,
with a button; POST: done).
"""
from __future__ import annotations

import asyncio
import email
import os
import re
import time
from email.message import EmailMessage
from email.policy import default

import httpx
import pytest

from pipeline.blobsegments import SEGMENTS
from pipeline.blobstore import FileBlobStore
from pipeline.cli.components import load_config
from pipeline.links import LinkToken, link_key, read_link_token
from pipeline.state.quarantine import read_quarantine_state
from tests.integration.conftest import Stack, new_test_id, send_data
from tests.integration.test_quarantine_release import quarantine_on
from tests.integration.test_spam import LENA, SPAM_BODY, SPAM_SUBJECT, delivered, message

pytestmark = pytest.mark.integration


def _entry_of(stack: Stack, message_id: str) -> str:
    settings = load_config(environ=stack.env)

    def found() -> str | None:
        entries = asyncio.run(read_quarantine_state(settings)).by_message(message_id)
        return entries[0].id if entries else None

    return stack.wait_for(found, timeout=60, what=f"the quarantine entry of {message_id}")


def _digests(stack: Stack, address: str) -> list[EmailMessage]:
    """The digests in the maildir (by their Auto-Submitted field and subject)."""
    found = []
    for raw in stack.messages(address):
        mail = email.message_from_bytes(raw, policy=default)
        if mail["Auto-Submitted"] == "auto-generated" and str(mail["Subject"] or "").startswith("Quarantäne:"):
            found.append(mail)
    return found


def _links(stack: Stack, digest: EmailMessage) -> list[tuple[str, LinkToken]]:
    """Every entry link of a digest's text part, with the token it carries (checked with the site's key)."""
    key = link_key(load_config(environ=stack.env))
    text = digest.get_body(("plain",)).get_content()
    return [(url, read_link_token(key, token)) for url, token in re.findall(r"(https?://\S+/l/(\S+))", text)]


def _follow(url: str) -> str:
    """Follow a digest link as a person does: open it (a page that says what it will do and asks),
    then press its button (a POST with the page's CSRF token and cookie). Returns the final page, in
    English: the browser asks for it (Accept-Language), which decides before a sign-in."""
    with httpx.Client(follow_redirects=True, timeout=30, headers={"Accept-Language": "en"}) as browser:
        page = browser.get(url)
        token = re.search(r'name="csrf" value="([^"]+)"', page.text)
        if token is None:  # nothing to confirm: the page says why (already released, expired, ...)
            return page.text
        return browser.post(url, data={"csrf": token.group(1)}).text


def test_a_held_spam_is_listed_in_one_digest_and_its_release_link_delivers_it_once(stack: Stack) -> None:
    quarantine_on(stack, LENA)
    try:
        test_id = new_test_id()
        reply = send_data(stack, message(test_id, [LENA], SPAM_SUBJECT, SPAM_BODY), [LENA])
        assert reply.code == 250, reply
        entry = _entry_of(stack, reply.message_id)
        digests_before = len(_digests(stack, LENA))

        dry = stack.cli("digest", "send", "--user", LENA, "--dry-run")
        assert entry in dry.stdout and "sent as" not in dry.stdout
        sent = stack.cli("digest", "send", "--user", LENA)
        assert entry in sent.stdout and "sent as" in sent.stdout, sent.stdout

        def our_digest() -> EmailMessage | None:
            mine = [d for d in _digests(stack, LENA) if any(t.entry == entry for _, t in _links(stack, d))]
            return mine[0] if mine else None

        digest = stack.wait_for(our_digest, timeout=60, what="the digest in lena's maildir")
        assert len(_digests(stack, LENA)) == digests_before + 1
        assert test_id.encode() not in b"".join(stack.messages(LENA))  # held: not delivered
        assert digest["X-Spam-Flag"] is None and "{SPAM" not in digest["Subject"]  # the stages let it through
        assert SPAM_SUBJECT in digest.get_body(("html",)).get_content()
        ours = {t.action: t for _, t in _links(stack, digest) if t.entry == entry}
        assert sorted(ours) == ["allow_sender", "delete", "release", "release_learn"]
        release = next(url for url, t in _links(stack, digest) if t == ours["release"])
        assert release.startswith(load_config(environ=stack.env).web.url + "/l/")  # the portal's link page

        assert "released" in _follow(release).lower()
        delivered(stack, LENA, test_id)
        assert "already released" in _follow(release).lower()  # the same link again
        time.sleep(3.0)
        assert stack.test_ids(LENA)[test_id] == 1

        again = stack.cli("digest", "send", "--user", LENA)
        assert entry not in again.stdout
        time.sleep(2.0)
        listing = [d for d in _digests(stack, LENA) if any(t.entry == entry for _, t in _links(stack, d))]
        assert len(listing) == 1
    finally:
        stack.cli("user", "reset", LENA, check=False)


def test_the_cleanup_deletes_blobs_past_their_retention_but_not_a_held_one(stack: Stack) -> None:
    """`[blobs] retention` (30 days): the digest service's cleanup, which runs at its start, deletes
    a blob last stored longer ago that nothing needs, and keeps a younger one, and the segment file
    of a message an open quarantine entry refers to, however old."""
    settings = load_config(environ=stack.env)
    blobs = FileBlobStore(settings.home / "blobs")
    quarantine_on(stack, LENA)
    try:
        reply = send_data(stack, message(new_test_id(), [LENA], SPAM_SUBJECT, SPAM_BODY), [LENA])
        assert reply.code == 250, reply
        _entry_of(stack, reply.message_id)
        [entry] = asyncio.run(read_quarantine_state(settings)).by_message(reply.message_id)
        held = entry.event.message.blob
        aged = blobs.put(b"Subject: delivered long ago\r\n\r\n" + new_test_id().encode() + b"\r\n")
        young = blobs.put(b"Subject: delivered today\r\n\r\n" + new_test_id().encode() + b"\r\n")
        long_ago = time.time() - 40 * 86_400
        assert held.segment  # the ingress appends to its segment files
        held_file = blobs.root / SEGMENTS / held.segment  # (it may be written again meanwhile: kept either way)
        for path in (blobs.path_of(aged.sha256), held_file):
            os.utime(path, (long_ago, long_ago))

        stack.wait_restarted("digest", stack.kill("digest"))
        stack.wait_for(lambda: not blobs.path_of(aged.sha256).exists(), timeout=60, what="the aged blob deleted")
        assert blobs.get(held) and blobs.get(young)
        assert "blob retention: " in (stack.home / "log" / "digest.log").read_text(errors="replace")
        deleted = stack.scrape("digest").get(("poststelle_blobs_deleted_total", (("reason", "retention"),)), 0)
        assert deleted >= 1  # the restarted process's own count
    finally:
        stack.cli("user", "reset", LENA, check=False)
