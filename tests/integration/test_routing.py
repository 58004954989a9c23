"""Per-address routing against the real stack: the directory's mailHost and mailRoutingAddress, the
site routing table's sub-domain route, each to its own destination and sink.

The demo config (deploy/local/poststelle.toml) has the destinations store2 (the local Dovecot on a
second LMTP port, mailHost store2.school.test) and physik (an smtp-sink of its own for
physik.school.test and every name under it); the demo directory has paul.wagner on store2 and the
alumni forward ex.schueler -> ex.schueler@alumni.test (a mailRoutingAddress, to the smarthost).
"""
from __future__ import annotations

from pathlib import Path

from pipeline.localstack.smarthost import destination_dump_dir, smarthost_dump_dir
from tests.integration.test_expand import ANNA, MAX, _copies, _from_anna
from tests.integration.test_recipients import _events
from tests.integration.conftest import new_test_id

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
    assert f"X-Rcpt-Args: <{ALUMNI_OUTSIDE}>" in forward and ALUMNI not in forward.split("\n\n", 1)[0]

    # the physics server got one transaction with both of its recipients
    [physik] = stack.wait_for(lambda: _dumps_with(destination_dump_dir(stack.home, "physik"), test_id),
                              what="the physics server's copy")
    head = physik.split("\n\n", 1)[0]
    assert f"X-Rcpt-Args: <{PHYSIK}>" in head and f"X-Rcpt-Args: <{LAB}>" in head
    assert f"X-Mail-Args: <{ANNA}>" in head

    # the history shows the rewrite and why each recipient went where it went
    events = _events(stack, message_id)
    [route] = [e for e in events if e["type"] == "stage_result" and e["result"]["stage"] == "route"]
    details = route["result"]["details"]
    assert details["rewritten"] == {ALUMNI: ALUMNI_OUTSIDE}
    assert details["reasons"][PAUL] == "mailHost store2.school.test"
    assert details["reasons"][LAB] == "domain route .physik.school.test"
    routed = {e["destination"] for e in events if e["type"] == "routed"}
    assert routed == {"store2", "smarthost", "physik", "lmtp"}
