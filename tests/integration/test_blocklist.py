"""The blocklist stage in the real stack: NSD's test URIBL, the site's lists in Kafka, the DNSBL re-check.

The session stack runs the local config (topology blocklist → route). The DNSBL re-check needs an
ingress that skips its DNSBL check after a DNS failure, so that test starts a second stack (ports
base+100...) whose `[checks.dnsbl]` asks a zone NSD refuses (a temporary failure, on_error = "skip")
while the stage re-checks in zen.dnsbl.test.
"""
from __future__ import annotations

import smtplib
import time
from collections.abc import Iterator

import orjson
import pytest

from tests.integration.conftest import REPO, SESSION_BASE, Stack, launch, make_message, new_test_id, stop

MAX = "max.mustermann@school.test"
LISTED_MTA = "127.0.1.66"  # sbl.listed.test: forward-confirmed, zen.dnsbl.test 127.0.0.2
GREYLIST_DELAY = 2.0  # POSTSTELLE_CHECKS__GREYLIST__DELAY in the test stack
LIST_PROPAGATION = 3.0  # seconds for a `poststelle list` change to reach the running stage


def send_from(stack: Stack, msg: bytes, mail_from: str, ip: str = "127.0.0.1", helo: str = "client.test") -> None:
    """Send; a 554 at DATA (the SMTP-time verdict, when the ingress waits for it) counts as sent."""
    with smtplib.SMTP("127.0.0.1", stack.smtp_port, source_address=(ip, 0), timeout=60) as client:
        client.ehlo(helo)
        try:
            client.sendmail(mail_from, [MAX], msg)
        except smtplib.SMTPDataError as exc:
            if exc.smtp_code != 554:
                raise


def events_of(stack: Stack, event_type: str, test_id: str) -> list[dict]:
    rows = stack.sql(f"SELECT payload FROM poststelle.events WHERE type = '{event_type}' "
                     f"AND position(payload, '{test_id}') > 0")
    return [orjson.loads(row[0]) for row in rows]


def blocklist_result(stack: Stack, test_id: str) -> dict:
    def found():
        results = [e["result"] for e in events_of(stack, "stage_result", test_id)]
        return next((r for r in results if r["stage"] == "blocklist"), None)
    return stack.wait_for(found, timeout=60, what=f"the blocklist stage_result of {test_id}")


def delivered(stack: Stack, test_id: str) -> bool:
    return stack.test_ids(MAX)[test_id] == 1


# ---- the session stack ---------------------------------------------------------------------------


def test_link_to_a_uribl_listed_domain_is_a_fail_with_the_zone(stack: Stack) -> None:
    test_id = new_test_id()
    body = "Ihr Konto ist gesperrt: https://www.bad-link.test/login?id=7\r\n"
    send_from(stack, make_message(test_id, body=body), "sender@example.org")
    result = blocklist_result(stack, test_id)
    assert result["verdict"] == "fail"
    assert result["score"] == 1.0
    assert [(x["check"], x["zone"], x["subject"], x["codes"]) for x in result["details"]["listed"]] == [
        ("uribl", "multi.uribl.test", "bad-link.test", ["127.0.0.2"])]
    # a listing is a score for later stages, not a rejection: the message is delivered
    stack.wait_for(lambda: delivered(stack, test_id), timeout=60, what="delivery of the listed-link message")


def test_clean_links_pass(stack: Stack) -> None:
    test_id = new_test_id()
    send_from(stack, make_message(test_id, body="Siehe https://good.test/plan\r\n"), "sender@example.org")
    result = blocklist_result(stack, test_id)
    assert (result["verdict"], result["details"]["listed"], result["details"]["url_domains"]) == (
        "pass", [], ["good.test"])


def test_site_block_list_rejects_until_the_entry_is_removed(stack: Stack) -> None:
    domain = f"blocked-{new_test_id()[:8]}.test"
    added = stack.cli("list", "add", "block", "domain", domain, "--comment", "integration test")
    assert f"added to the block list: domain {domain}" in added.stdout
    assert domain in stack.cli("list", "show", "block").stdout
    time.sleep(LIST_PROPAGATION)

    test_id = new_test_id()
    send_from(stack, make_message(test_id), f"news@mail.{domain}")
    (rejected,) = stack.wait_for(lambda: events_of(stack, "rejected", test_id), timeout=60,
                                 what="the rejected event of the blocked sender")
    assert rejected["stage"] == "blocklist"
    assert rejected["reason"] == (f"site block list: sender news@mail.{domain} (entry domain {domain}): "
                                  "integration test")
    assert rejected["results"][-1]["details"]["site_block"]["source"] == "sender"

    removed = stack.cli("list", "remove", "block", "domain", domain)
    assert f"removed from the block list: domain {domain}" in removed.stdout
    assert domain not in stack.cli("list", "show").stdout
    again = stack.cli("list", "remove", "block", "domain", domain, check=False)
    assert again.returncode == 1 and "is not on the block list" in again.stderr
    time.sleep(LIST_PROPAGATION)

    accepted_id = new_test_id()
    send_from(stack, make_message(accepted_id), f"news@mail.{domain}")
    stack.wait_for(lambda: delivered(stack, accepted_id), timeout=60, what="delivery after the entry was removed")
    assert not delivered(stack, test_id)
    assert events_of(stack, "rejected", accepted_id) == []


def test_list_cli_refuses_invalid_entries(stack: Stack) -> None:
    done = stack.cli("list", "add", "block", "cidr", "127.0.0.1/8", check=False)
    assert done.returncode == 2
    assert "has host bits set; did you mean 127.0.0.0/8?" in done.stderr


# ---- a stack whose ingress skips the DNSBL after a DNS failure -------------------------------------

SKIP_BASE = SESSION_BASE + 100
SKIP_ENV = {
    "POSTSTELLE_CHECKS__DNSBL__ON_ERROR": "skip",
    # NSD serves no such zone and answers REFUSED: a temporary failure for the ingress
    "POSTSTELLE_CHECKS__DNSBL__SITES": '[{zone = "dnsbl.unserved.example", weight = 3}]',
    "POSTSTELLE_STAGES__BLOCKLIST__DNSBL": '[{zone = "zen.dnsbl.test", codes = ["127.0.0.2-127.0.0.3"], weight = 3}]',
}


@pytest.fixture(scope="module")
def skipping_stack() -> Iterator[Stack]:
    own = launch(REPO / "var" / f"test-stack-{SKIP_BASE}", SKIP_BASE, SKIP_ENV)
    yield own
    stop(own)


def test_dnsbl_skipped_at_the_ingress_is_rechecked_in_the_stage(skipping_stack: Stack) -> None:
    test_id = new_test_id()
    msg = make_message(test_id)
    for attempt in range(3):  # the first attempt from a new client is greylisted
        try:
            send_from(skipping_stack, msg, "someone@good.test", ip=LISTED_MTA, helo="sbl.listed.test")
            break
        except smtplib.SMTPRecipientsRefused as exc:
            assert exc.recipients[MAX][0] == 451, exc.recipients
            time.sleep(GREYLIST_DELAY + 0.5)
    else:
        raise AssertionError("still greylisted")
    (received,) = skipping_stack.wait_for(lambda: events_of(skipping_stack, "received", test_id), timeout=60,
                                          what="the received event")
    assert received["skipped_checks"] == ["dnsbl"]
    result = blocklist_result(skipping_stack, test_id)
    assert result["verdict"] == "fail" and result["score"] == 3.0
    assert result["details"]["dnsbl_rechecked"] == LISTED_MTA
    assert [(x["check"], x["zone"], x["subject"]) for x in result["details"]["listed"]] == [
        ("dnsbl", "zen.dnsbl.test", LISTED_MTA)]
