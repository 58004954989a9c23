"""Per-recipient decisions: what one outcome does to the recipients in play (`pipeline.recipients`)."""
from __future__ import annotations

import pytest

from pipeline.recipients import apply_outcome, copies, edits_for
from pipeline.stage import Outcome, Work
from schemas.events import BlobRef, Client, Edit, Envelope, Received, Replacement, Verdict

A, B, C, LIST = "a@school.test", "b@school.test", "c@school.test", "list@school.test"


def _work(recipients: list[str], edits: list[Edit] | None = None) -> Work:
    message = Received(message_id="m", envelope=Envelope(mail_from="x@ext.test", rcpt_to=list(recipients)),
                       client=Client(ip="192.0.2.1", port=1), blob=BlobRef(sha256="0" * 64, size=1))
    return Work(message=message, edits=edits or [])


def _tag(value: str, recipients: list[str] | None = None) -> Edit:
    return Edit(stage="spam", kind="subject_tag", value=value, recipients=recipients or [])


def test_nothing_decided_passes_everyone_on():
    fan = apply_outcome(_work([A, B]), Outcome(verdict=Verdict.PASS), "s")
    assert fan.remaining == [A, B] and not (fan.rejected or fan.quarantined or fan.routed or fan.replacements)


def test_work_defaults_to_the_envelope_recipients():
    assert _work([A, B]).recipients == [A, B]


def test_a_whole_message_rejection_takes_every_recipient_in_play():
    fan = apply_outcome(_work([A, B]), Outcome(verdict=Verdict.FAIL, reject="virus"), "virus")
    assert fan.rejected == {"virus": [A, B]} and fan.remaining == [] and fan.decided == [A, B]


def test_per_recipient_decisions_group_by_reason_and_leave_the_rest():
    outcome = Outcome(verdict=Verdict.FAIL, quarantined={A: "spam 8.1", C: "spam 8.1"}, rejected={B: "no such user"})
    fan = apply_outcome(_work([A, B, C, LIST]), outcome, "spam")
    assert fan.quarantined == {"spam 8.1": [A, C]} and fan.rejected == {"no such user": [B]}
    assert fan.remaining == [LIST]


def test_a_replacement_puts_its_addresses_in_place_once_each():
    outcome = Outcome(verdict=Verdict.PASS, replace=[Replacement(recipient=LIST, into=[B, A, C, B], reason="group")])
    fan = apply_outcome(_work([A, LIST, C]), outcome, "expand")
    assert fan.remaining == [A, B, C]  # in place of the list; a and c (already there) once
    (stamped,) = fan.replacements
    assert (stamped.stage, stamped.recipient, stamped.into) == ("expand", LIST, [B, A, C])


def test_edits_that_named_a_replaced_recipient_name_its_addresses():
    earlier = [_tag("[A]", [A]), _tag("[LIST]", [LIST]), _tag("[ALL]")]
    outcome = Outcome(verdict=Verdict.PASS, replace=[Replacement(recipient=LIST, into=[B, C])])
    fan = apply_outcome(_work([A, LIST], earlier), outcome, "expand")
    assert [e.recipients for e in fan.edits] == [[A], [B, C], []]


def test_decisions_and_edits_may_name_the_new_addresses():
    outcome = Outcome(verdict=Verdict.PASS, replace=[Replacement(recipient=LIST, into=[B, C])],
                      quarantined={C: "spam"}, edits=[_tag("[SPAM?]", [B])])
    fan = apply_outcome(_work([A, LIST]), outcome, "s")
    assert fan.remaining == [A, B] and fan.quarantined == {"spam": [C]}
    assert fan.edits[-1].recipients == [B]


def test_routes_take_their_recipients_out_of_play():
    fan = apply_outcome(_work([A, B, C]), Outcome(verdict=Verdict.PASS, routes={"lmtp": [A, C], "smarthost": [B]}),
                        "route")
    assert fan.routed == {"lmtp": [A, C], "smarthost": [B]} and fan.remaining == []


@pytest.mark.parametrize("outcome, message", [
    (Outcome(verdict=Verdict.FAIL, rejected={"x@school.test": "r"}), "not in play"),
    (Outcome(verdict=Verdict.PASS, edits=[_tag("[T]", ["x@school.test"])]), "not in play"),
    (Outcome(verdict=Verdict.PASS, replace=[Replacement(recipient="x@school.test", into=[A])]), "not in play"),
    (Outcome(verdict=Verdict.PASS, replace=[Replacement(recipient=A, into=[])]), "by no address"),
    (Outcome(verdict=Verdict.FAIL, rejected={A: "r"}, quarantined={A: "q"}), "both rejected and quarantined"),
    (Outcome(verdict=Verdict.PASS, routes={"lmtp": [A], "smarthost": [A]}), "smarthost names 'a@school.test', not"),
    (Outcome(verdict=Verdict.FAIL, quarantined={A: "q"}, routes={"lmtp": [A]}), "not in play"),
])
def test_an_outcome_naming_what_is_not_in_play_is_refused(outcome, message):
    with pytest.raises(ValueError, match=message):
        apply_outcome(_work([A, B]), outcome, "s")


def test_copies_group_recipients_by_the_edits_that_apply_to_them():
    edits = [_tag("[ALL]"), _tag("[SPAM?]", [A, C]), Edit(stage="s", kind="add_header", name="X", value="1",
                                                        recipients=[C])]
    groups = copies([A, B, C, LIST], edits)
    assert [(members, [e.value for e in applied]) for members, applied in groups] == [
        ([A], ["[ALL]", "[SPAM?]"]), ([B, LIST], ["[ALL]"]), ([C], ["[ALL]", "[SPAM?]", "1"])]
    assert copies([A, B], []) == [([A, B], [])]
    assert edits_for(edits, C) == edits and edits_for(edits, B) == edits[:1]
