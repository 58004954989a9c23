"""`poststelle trace` and the operator's `poststelle quarantine` against the real stack.

The acceptance case: a spam from a remote MTA (127.0.2.20, mx.ext.test) to lena, who has her
quarantine on, is greylisted on its first attempt, passes on the retry after the test stack's 2 s
delay, is held by the spam stage, released with `poststelle quarantine release ENTRY`, and
delivered. `poststelle trace` of it shows every step, in that order, read from the analytics store.
Then two held `.exe` parts: the user asks for the release of one (a category only an admin may
release, as the portal does), an operator approves it with `poststelle quarantine approve`, and
deletes the other; a second action on either is refused.
"""
from __future__ import annotations

import asyncio
import re
import smtplib
import time

import orjson
import pytest

from pipeline.blobstore import FileBlobStore
from pipeline.cli.components import load_config
from pipeline.producers import TransactionalProducer
from pipeline.state.quarantine import QuarantineView
from pipeline.state.quarantine_actions import QuarantineActions
from tests.integration.conftest import SMTP_HOST, Stack, new_test_id
from tests.integration.test_attachment import CASES, _b64
from tests.integration.test_attachment import message as attachment_message
from tests.integration.test_quarantine_release import quarantine_on
from tests.integration.test_spam import LENA, SPAM_BODY, SPAM_SUBJECT, delivered, message

pytestmark = pytest.mark.integration

REMOTE_MTA = "127.0.2.20"  # mx.ext.test: forward-confirmed, listed nowhere, not allow-listed: greylisted
GREYLIST_DELAY = 2.0  # POSTSTELLE_CHECKS__GREYLIST__DELAY in the test stack


def send_greylisted(stack: Stack, raw: bytes, mail_from: str, to: str) -> tuple[str, int]:
    """Send from REMOTE_MTA like a real MTA: after a 451 at RCPT, wait the delay and try again.
    Returns the message id of the 250 reply and how many attempts were refused first."""
    refused = 0
    for _ in range(4):
        with smtplib.SMTP(SMTP_HOST, stack.smtp_port, source_address=(REMOTE_MTA, 0), timeout=60) as client:
            client.ehlo("mx.ext.test")
            client.mail(mail_from)
            code, reply = client.rcpt(to)
            if code == 451:
                refused += 1
                client.rset()
                time.sleep(GREYLIST_DELAY + 0.5)
                continue
            assert code == 250, (code, reply)
            code, reply = client.data(raw)
            assert code == 250, (code, reply)
            return re.search(rb"queued as (\S+)", reply).group(1).decode(), refused
    raise AssertionError("still greylisted after 4 attempts")


def entries_of(stack: Stack, message_id: str, status: str = "open") -> list[dict]:
    listing = orjson.loads(stack.cli("quarantine", "list", "--status", status, "--json").stdout)
    return [dict(zip(listing["columns"], row)) for row in listing["rows"] if row[1] == message_id]


def wait_entry(stack: Stack, message_id: str) -> dict:
    [entry] = stack.wait_for(lambda: entries_of(stack, message_id), timeout=60, what=f"the entry of {message_id}")
    return entry


def timeline(stack: Stack, ref: str, until) -> list[dict]:
    """The steps `poststelle trace --json` prints, once `until(steps)` holds (the store lags a little)."""
    def steps():
        done = stack.cli("trace", ref, "--json", check=False)
        if done.returncode != 0:
            return None
        [found] = orjson.loads(done.stdout)["timelines"]
        return found["steps"] if until(found["steps"]) else None

    return stack.wait_for(steps, timeout=60, interval=1.0, what=f"the timeline of {ref}")


def test_trace_of_a_greylisted_spam_held_and_released_shows_every_step_in_order(stack: Stack) -> None:
    quarantine_on(stack, LENA)
    try:
        test_id = new_test_id()
        sender = f"prize-{test_id[:8]}@ext.test"  # a new triplet: greylisted once
        message_id, refused = send_greylisted(stack, message(test_id, [LENA], SPAM_SUBJECT, SPAM_BODY), sender, LENA)
        assert refused == 1
        entry = wait_entry(stack, message_id)
        assert (entry["category"], entry["stage"], entry["recipient"]) == ("spam", "spam", LENA)
        assert test_id.encode() not in b"".join(stack.messages(LENA))

        done = stack.cli("quarantine", "release", entry["entry"])
        assert f"{entry['entry']}: release for {LENA} by cli:" in done.stdout
        delivered(stack, LENA, test_id)
        again = stack.cli("quarantine", "release", entry["entry"], check=False)
        assert again.returncode == 1 and "released already" in again.stderr

        steps = timeline(stack, message_id, lambda s: any(x["type"] == "delivered" for x in s))
        kinds = [(x["component"], x["type"]) for x in steps]
        summaries = [x["summary"] for x in steps]

        def at(predicate, what: str) -> int:
            found = [i for i, x in enumerate(steps) if predicate(x)]
            assert found, f"no step for {what} in:\n" + "\n".join(summaries)
            return found[0]

        order = [
            at(lambda x: x["type"] == "smtp_reject" and x["details"]["check"] == "greylist", "the greylisted attempt"),
            at(lambda x: x["type"] == "smtp_check" and x["details"].get("result") == "passed_after_retry",
               "greylisting passed after the retry"),
            at(lambda x: x["type"] == "received", "the acceptance"),
            at(lambda x: x["type"] == "stage_result" and x["component"] == "blocklist", "the blocklist's result"),
            at(lambda x: x["type"] == "stage_result" and x["component"] == "virus", "the virus scan's result"),
            at(lambda x: x["type"] == "quarantined" and x["component"] == "spam", "the quarantine by spam"),
            at(lambda x: x["type"] == "quarantine_action" and x["details"]["action"] == "release", "the release"),
            at(lambda x: x["type"] == "stage_result" and x["component"] == "route", "the routing of the copy"),
            at(lambda x: x["type"] == "delivered", "the delivery"),
        ]
        assert order == sorted(order), "\n".join(summaries)
        assert [k for k in kinds if k[1] == "smtp_reject"] == [("ingress", "smtp_reject")]  # refused once
        held = steps[order[5]]
        assert held["summary"].startswith(f"Held in quarantine by the spam check for {LENA}: spam: ")
        assert held["details"]["result"]["score"] >= 5 and held["details"]["result"]["duration_ms"] > 0
        release = steps[order[6]]
        assert release["summary"].startswith(f"Released for {LENA} by cli:")
        assert steps[order[8]]["summary"].startswith(f"Delivered to {LENA} (250 ")
        assert steps[order[6] + 1]["summary"] == f"The released copy for {LENA} goes on after the spam check"
        times = [x["time"] for x in steps]
        assert times == sorted(times)

        # the same timeline by the Message-ID header, and by recipient and time; as text
        text = stack.cli("trace", f"<{test_id}@example.org>").stdout
        assert text.splitlines()[0].startswith(f"message {message_id}: from <{sender}> to {LENA}")
        assert len(text.splitlines()) == len(steps) + 1
        by_rcpt = orjson.loads(stack.cli("trace", "--recipient", LENA, "--since", "10m", "--json").stdout)
        assert message_id in [t["message_id"] for t in by_rcpt["timelines"]]
        shown = stack.cli("quarantine", "show", entry["entry"]).stdout
        assert re.search(r"^status +released$", shown, re.M) and "Released for" in shown
    finally:
        stack.cli("user", "reset", LENA, check=False)


def test_an_operator_approves_a_held_attachment_and_deletes_another(stack: Stack) -> None:
    headers, payload, _ = CASES["double_extension"]
    ids = []
    for _ in range(2):
        test_id = new_test_id()
        with smtplib.SMTP(SMTP_HOST, stack.smtp_port, timeout=30) as client:
            client.ehlo()
            client.mail("sender@example.org")
            client.rcpt("max.mustermann@school.test")
            code, reply = client.data(attachment_message(test_id, headers, payload))
        assert code == 250, reply
        ids.append((test_id, re.search(rb"queued as (\S+)", reply).group(1).decode()))
    (approve_test, approve_mid), (_, delete_mid) = ids
    approved, deleted = wait_entry(stack, approve_mid), wait_entry(stack, delete_mid)
    assert approved["category"] == "attachment" and approved["part"] == "2"

    asyncio.run(request_release(stack, approved["entry"], "portal:max.mustermann@school.test"))
    assert "approve for max.mustermann@school.test" in stack.cli("quarantine", "approve", approved["entry"]).stdout
    assert "delete for max.mustermann@school.test" in stack.cli("quarantine", "delete", deleted["entry"]).stdout
    for action, entry in (("approve", approved), ("delete", deleted)):
        again = stack.cli("quarantine", action, entry["entry"], check=False)
        assert again.returncode == 1 and "already" in again.stderr, again.stderr
    assert entries_of(stack, approve_mid, "released") and entries_of(stack, delete_mid, "deleted")
    # the original with the part restored reaches the mailbox (besides the copy with the notice)
    stack.wait_for(lambda: any(_b64(payload)[:40] in raw for raw in stack.messages("max.mustermann@school.test")
                               if approve_test.encode() in raw), timeout=60, what="the approved original")
    steps = timeline(stack, approve_mid, lambda s: any(x["type"] == "delivered" and x["message_id"] != approve_mid
                                                       for x in s))
    summaries = [x["summary"] for x in steps]
    requested = summaries.index("Release requested for max.mustermann@school.test by portal:max.mustermann@school.test")
    approved_at = next(i for i, s in enumerate(summaries) if s.startswith("Release approved for max.mustermann@"))
    assert requested < approved_at < len(summaries) - 1 and steps[-1]["type"] == "delivered", "\n".join(summaries)


async def request_release(stack: Stack, entry: str, by: str) -> None:
    """What the portal does for a user: ask for the release of an entry only an admin may release."""
    settings = load_config(environ=stack.env)
    view = QuarantineView(settings, "test-trace")
    producer = TransactionalProducer(settings.kafka, "test-trace-request")
    try:
        assert await view.start(30)
        await QuarantineActions(settings, view, producer, FileBlobStore(settings.home / "blobs")).request_release(
            entry, by)
    finally:
        await producer.stop()
        await view.close()
