"""Per-address routing against the real stack: the directory's mailHost and mailRoutingAddress, the
site routing table's sub-domain route, each to its own destination and sink.

The demo config (deploy/local/poststelle.toml) has the destinations store2 (the local Dovecot on a
second LMTP port, mailHost store2.school.test) and physik (an smtp-sink of its own for
physik.school.test and every name under it); the demo directory has paul.wagner on store2 and the
alumni forward ex.schueler -> ex.schueler@alumni.test (a mailRoutingAddress, to the smarthost).
"""
from __future__ import annotations

import re
import smtplib
from pathlib import Path

import orjson

from pipeline.localstack.smarthost import destination_dump_dir, smarthost_dump_dir
from tests.integration.conftest import SMTP_HOST, SMTP_PORT, make_message, new_test_id, send
from tests.integration.test_delivery import _own_smarthost, _restore_smarthost
from tests.integration.test_expand import ANNA, MAX, _copies, _from_anna
from tests.integration.test_recipients import _events

PAUL = "paul.wagner@school.test"
ALUMNI = "ex.schueler@school.test"
ALUMNI_OUTSIDE = "ex.schueler@alumni.test"
PHYSIK = "prof.kern@physik.school.test"
LAB = "labor@optik.physik.school.test"


def _dumps_with(dump_dir: Path, test_id: str) -> list[str]:
    if not dump_dir.is_dir():
        return []
    found = [p.read_bytes() for p in sorted(dump_dir.iterdir()) if p.is_file()]
    return [d.decode("utf-8", "replace") for d in found if test_id.encode() in d and d.endswith(b"\n\n")]


def _delivered(stack, message_id: str, count: int) -> dict[str, str]:
    """recipient -> destination of the message's `delivered` events, once `count` of them are in analytics."""
    def found():
        done = {e["recipient"]: e["destination"] for e in _events(stack, message_id) if e["type"] == "delivered"}
        return done if len(done) >= count else None

    return stack.wait_for(found, timeout=90, what=f"{count} delivered events")


def test_store2_alumni_forward_and_sub_domain_route_each_reach_their_destination(stack):
    test_id = new_test_id()
    message_id = _from_anna(stack, test_id, [PAUL, ALUMNI, PHYSIK, LAB, MAX])

    delivered = _delivered(stack, message_id, 5)
    assert delivered == {PAUL: "store2", ALUMNI_OUTSIDE: "smarthost", PHYSIK: "physik", LAB: "physik", MAX: "lmtp"}

    # paul's copy reached the mailbox through the second LMTP port; max's, unaffected, the usual way
    assert _copies(stack, PAUL, test_id) == 1
    assert _copies(stack, MAX, test_id) == 1

    # the alumni address was rewritten: the smarthost got the outside address, not the school one
    [forward] = stack.wait_for(lambda: _dumps_with(smarthost_dump_dir(stack.home), test_id), what="the forward")
    assert re.findall(r"^X-Rcpt-Args: <(.*)>$", forward, re.M) == [ALUMNI_OUTSIDE]

    # the physics server got one transaction with both of its recipients
    [physik] = stack.wait_for(lambda: _dumps_with(destination_dump_dir(stack.home, "physik"), test_id),
                              what="the physics server's copy")
    assert sorted(re.findall(r"^X-Rcpt-Args: <(.*)>$", physik, re.M)) == sorted([PHYSIK, LAB])
    assert f"X-Mail-Args: <{ANNA}>" in physik

    # the history shows the rewrite and why each recipient went where it went
    events = _events(stack, message_id)
    [route] = [e for e in events if e["type"] == "stage_result" and e["result"]["stage"] == "route"]
    details = route["result"]["details"]
    assert details["rewritten"] == {ALUMNI: ALUMNI_OUTSIDE}
    assert details["reasons"][PAUL] == "mailHost store2.school.test"
    assert details["reasons"][LAB] == "domain route .physik.school.test"
    routed = {e["destination"] for e in events if e["type"] == "routed"}
    assert routed == {"store2", "smarthost", "physik", "lmtp"}


def test_a_per_user_forward_keeps_a_copy_in_the_mailbox(stack):
    lisa, private = "lisa.koch@school.test", "lisa.koch@privat.test"
    test_id = new_test_id()
    message_id = _from_anna(stack, test_id, [lisa])
    assert _delivered(stack, message_id, 2) == {lisa: "lmtp", private: "smarthost"}
    assert _copies(stack, lisa, test_id) == 1
    [forward] = stack.wait_for(lambda: _dumps_with(smarthost_dump_dir(stack.home), test_id), what="the forward")
    assert re.findall(r"^X-Rcpt-Args: <(.*)>$", forward, re.M) == [private]
    assert f"X-Mail-Args: <{ANNA}>" in forward  # a local sender needs no SRS


def test_mail_from_outside_for_the_relayed_sub_domain_reaches_its_server(stack):
    test_id = new_test_id()
    send(make_message(test_id, to=LAB), [LAB], mail_from="kollege@example.org")  # the MX: relay_domains
    [copy] = stack.wait_for(lambda: _dumps_with(destination_dump_dir(stack.home, "physik"), test_id),
                            what="the physics server's copy")
    assert re.findall(r"^X-Rcpt-Args: <(.*)>$", copy, re.M) == [LAB]
    with smtplib.SMTP(SMTP_HOST, SMTP_PORT, timeout=30) as client:  # a sibling sub-domain is not relayed
        client.ehlo("mta.example.org")
        assert client.mail("kollege@example.org")[0] == 250
        assert client.rcpt("x@chemie.school.test")[0] == 554


# ---- forwarding with SRS ([srs] in the local config) ----------------------------------------------

OUTSIDE_SENDER = "vater@example.org"


def _signer(stack):
    from pipeline.cli.components import load_config
    from pipeline.mail.srs import srs_signer

    return srs_signer(load_config(stack.env["POSTSTELLE_CONFIG"], environ=stack.env))


def _forward_from_outside(stack, test_id: str) -> str:
    send(make_message(test_id, to=ALUMNI), [ALUMNI], mail_from=OUTSIDE_SENDER)
    return test_id


def test_the_alumni_forward_leaves_with_an_srs_sender_that_verifies(stack):
    test_id = _forward_from_outside(stack, new_test_id())
    [forward] = stack.wait_for(lambda: _dumps_with(smarthost_dump_dir(stack.home), test_id), what="the forward")
    assert re.findall(r"^X-Rcpt-Args: <(.*)>$", forward, re.M) == [ALUMNI_OUTSIDE]
    [sender] = re.findall(r"^X-Mail-Args: <(.*)>$", forward, re.M)
    assert sender.startswith("SRS0=") and sender.endswith("=example.org=vater@school.test")
    assert _signer(stack).reverse(sender) == OUTSIDE_SENDER


def test_a_forged_srs_address_is_refused_at_rcpt(stack):
    valid = _signer(stack).forward(OUTSIDE_SENDER)
    forged = valid.replace("=vater@", "=mallory@")
    with smtplib.SMTP(SMTP_HOST, SMTP_PORT, timeout=30) as client:
        client.ehlo("mta.example.org")
        assert client.mail("")[0] == 250
        code, text = client.rcpt(forged)
        assert (code, text.decode()) == (550, "5.7.1 Recipient address rejected: forged SRS address")
        assert client.rcpt(valid)[0] == 250  # a real one is accepted (no directory entry needed)


def test_a_5xx_for_the_forward_gives_a_dsn_routed_back_to_the_original_sender(stack):
    own = _own_smarthost(stack, ["-f", "RCPT"])  # the outside host refuses the forwarded copy
    try:
        test_id = _forward_from_outside(stack, new_test_id())
        [[message_id]] = stack.wait_for(lambda: stack.sql(
            "SELECT message_id FROM poststelle.events WHERE type = 'received' "
            f"AND position(payload, '{test_id}') > 0"), what="the forwarded message in analytics")
        bounced = stack.wait_for(lambda: [e for e in _events(stack, message_id) if e["type"] == "bounced"],
                                 timeout=90, what="the bounce of the forward")
    finally:
        _restore_smarthost(stack, own)
    assert bounced[0]["recipient"] == ALUMNI_OUTSIDE and bounced[0]["reply"]["code"] // 100 == 5
    srs_sender = bounced[0]["mail_from"]
    assert srs_sender.startswith("SRS0=")  # the bounce goes to the SRS address the copy left with ...

    def dsn_route():  # ... the DSN to it enters the pipeline, and the route stage reverses it
        rows = stack.sql("SELECT payload FROM poststelle.events WHERE type = 'stage_result' "
                         f"AND position(payload, '{srs_sender}') > 0")
        details = [orjson.loads(p)["result"]["details"] for (p,) in rows]
        return [d for d in details if srs_sender in d.get("rewritten", {})]

    [route] = stack.wait_for(dsn_route, timeout=90, what="the DSN routed back")
    assert route["rewritten"] == {srs_sender: OUTSIDE_SENDER}
    assert route["routes"] == {"smarthost": [OUTSIDE_SENDER]}
