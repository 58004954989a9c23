"""Per-recipient decisions against the real stack, made by the test stage `probe` (tests/integration/probe.py).

One message, several recipients, different fates: quarantined for one and delivered to the other,
a recipient replaced by two (a group expanded), an edit for one recipient only, a rejection of one
recipient that the sender (told 250 for the transaction) never heard of, and of every recipient (554).
"""
from __future__ import annotations

import email
import email.policy

import orjson

from tests.integration.conftest import PROBE_LIST, mail_with, new_test_id, read_all, send_data
from tests.integration.test_verdict import topics

MAX = "max.mustermann@school.test"
LENA = "lena.mueller@school.test"


def _events(stack, message_id: str) -> list[dict]:
    """The message's events in analytics (payloads), once the delivered ones arrived."""
    rows = stack.sql(f"SELECT type, payload FROM poststelle.events WHERE message_id = '{message_id}' ORDER BY time")
    return [orjson.loads(payload) | {"type": kind} for kind, payload in rows]


def _delivered_copies(stack, address: str, test_id: str) -> list[email.message.Message]:
    return [email.message_from_bytes(raw, policy=email.policy.default) for raw in stack.messages(address)
            if f"X-Test-Id: {test_id}".encode() in raw]


def test_one_recipient_quarantined_the_other_delivered(stack):
    test_id = new_test_id()
    reply = send_data(stack, mail_with(test_id, [MAX, LENA], {"X-Probe-Quarantine": LENA}), [MAX, LENA])
    assert reply.code == 250, reply
    assert reply.seconds < float(stack.env["POSTSTELLE_INGRESS__VERDICT_WAIT"])  # answered at the verdict
    message_id = reply.message_id
    stack.wait_for(lambda: _delivered_copies(stack, MAX, test_id), what="max's copy in Dovecot")
    held = stack.wait_for(lambda: [e for e in read_all(stack, topics(stack).quarantine)
                                   if e.message_id == message_id], what="lena's copy in the quarantine")
    assert [(e.type, e.recipients, e.stage, e.reason) for e in held] == [
        ("quarantined", [LENA], "probe", "probe: quarantined for test")]
    assert _delivered_copies(stack, LENA, test_id) == []
    listed = orjson.loads(stack.cli("quarantine", "list", "--json").stdout)
    at = {name: i for i, name in enumerate(listed["columns"])}
    assert [row[at["recipient"]] for row in listed["rows"] if row[at["message_id"]] == message_id] == [LENA]

    def both_in_analytics():
        events = _events(stack, message_id)
        return events if {"quarantined", "delivered"} <= {e["type"] for e in events} else None

    events = stack.wait_for(both_in_analytics, what="both recipients' events in analytics")
    (quarantined,) = [e for e in events if e["type"] == "quarantined"]
    (routed,) = [e for e in events if e["type"] == "routed"]
    (delivered,) = [e for e in events if e["type"] == "delivered"]
    assert quarantined["recipients"] == [LENA]
    assert routed["recipients"] == [MAX] and delivered["recipient"] == MAX
    probe_result = [e for e in events if e["type"] == "stage_result" and e["result"]["stage"] == "probe"]
    assert probe_result[0]["recipients"] == [MAX]  # the next stage saw only max


def test_a_recipient_replaced_by_two_gives_each_one_copy_with_the_history(stack):
    test_id = new_test_id()
    fields = {"X-Probe-Expand": f"{PROBE_LIST} = {MAX}, {LENA}"}
    # max is also a recipient of his own: he still gets one copy
    reply = send_data(stack, mail_with(test_id, [PROBE_LIST, MAX], fields), [PROBE_LIST, MAX])
    assert reply.code == 250, reply
    assert reply.seconds < float(stack.env["POSTSTELLE_INGRESS__VERDICT_WAIT"])  # the ingress followed the members
    for address in (MAX, LENA):
        stack.wait_for(lambda: _delivered_copies(stack, address, test_id), what=f"{address}'s copy")
    routed = read_all(stack, topics(stack).routed("lmtp"), lambda e: e.message_id == reply.message_id)
    assert sorted(r for e in routed for r in e.recipients) == [LENA, MAX]
    for event in routed:  # the history names the address the sender used and what it became
        (replacement,) = event.replacements
        assert (replacement.stage, replacement.recipient, replacement.into) == ("probe", PROBE_LIST, [MAX, LENA])
        assert replacement.reason == "probe: expanded"
    assert event.message.envelope.rcpt_to == [PROBE_LIST, MAX]  # the envelope as received stays as it was
    outcomes = read_all(stack, topics(stack).outcomes, lambda e: e.message_id == reply.message_id)
    assert [(o.disposition, o.recipients, o.into) for o in outcomes if o.disposition == "replaced"] == [
        ("replaced", [PROBE_LIST], [MAX, LENA])]
    stack.wait_for(lambda: len(_delivered_copies(stack, MAX, test_id)) == 1 and len(
        _delivered_copies(stack, LENA, test_id)) == 1, what="one copy each")


def test_an_edit_for_one_recipient_reaches_only_that_recipients_copy(stack):
    test_id = new_test_id()
    reply = send_data(stack, mail_with(test_id, [MAX, LENA], {"X-Probe-Tag": f"{MAX} = [Klasse 9a]"},
                                       subject="Elternabend"), [MAX, LENA])
    assert reply.code == 250, reply
    (for_max,) = stack.wait_for(lambda: _delivered_copies(stack, MAX, test_id), what="max's copy")
    (for_lena,) = stack.wait_for(lambda: _delivered_copies(stack, LENA, test_id), what="lena's copy")
    assert for_max["Subject"] == "[Klasse 9a] Elternabend"
    assert for_lena["Subject"] == "Elternabend"
    routed = read_all(stack, topics(stack).routed("lmtp"), lambda e: e.message_id == reply.message_id)
    assert sorted(e.recipients[0] for e in routed) == [LENA, MAX] and all(len(e.recipients) == 1 for e in routed)


def test_a_rejection_of_one_recipient_becomes_quarantine_for_that_recipient_only(stack):
    test_id = new_test_id()
    reply = send_data(stack, mail_with(test_id, [MAX, LENA], {"X-Probe-Reject": LENA}), [MAX, LENA])
    assert reply.code == 250, reply  # one reply for the transaction: max's copy was accepted
    stack.wait_for(lambda: _delivered_copies(stack, MAX, test_id), what="max's copy in Dovecot")
    held = stack.wait_for(lambda: [e for e in read_all(stack, topics(stack).quarantine)
                                   if e.message_id == reply.message_id], timeout=60,
                          what="lena's rejected copy in the quarantine (the verdict service)")
    assert [(e.recipients, e.reason) for e in held] == [([LENA], "late rejection: probe: rejected for test")]
    assert _delivered_copies(stack, LENA, test_id) == []


def test_a_rejection_of_every_recipient_is_554_at_data(stack):
    test_id = new_test_id()
    reply = send_data(stack, mail_with(test_id, [MAX, LENA], {"X-Probe-Reject": f"{MAX}, {LENA}"}), [MAX, LENA])
    assert (reply.code, reply.text) == (554, "5.7.1 Message refused by probe check: probe: rejected for test")
