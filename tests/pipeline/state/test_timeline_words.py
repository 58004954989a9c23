"""Plain words for the expand stage's steps in a message's timeline (pipeline.state.timeline_words)."""
from __future__ import annotations

from pipeline.state.timeline_words import describe
from schemas.events import BlobRef, Client, Edit, Envelope, Received, Replacement, Result, StageResult, Verdict
from schemas.ids import new_id

ANNA, MAX, LENA = "anna.schmidt@school.test", "max.mustermann@school.test", "lena.mueller@school.test"


def test_an_expanded_group_and_the_owner_bounces_are_told() -> None:
    envelope = Envelope(mail_from="vater@example.org", rcpt_to=["9a@school.test"])
    message = Received(message_id=new_id(), envelope=envelope,
                       client=Client(ip="192.0.2.7", port=40000, helo="mail.example.org"),
                       blob=BlobRef(sha256="0" * 64, size=0))
    event = StageResult(message_id=message.message_id, message=message, recipients=[MAX, LENA],
                        result=Result(stage="expand", verdict=Verdict.PASS),
                        edits=[Edit(stage="expand", kind="envelope_sender", value=ANNA, recipients=[MAX, LENA])],
                        replacements=[Replacement(stage="expand", recipient="9a@school.test", into=[MAX, LENA])])
    words = describe(event)
    assert words is not None and words.component == "expand"
    assert f"9a@school.test became {MAX}, {LENA}" in words.summary
    assert f"bounces for {MAX}, {LENA} go to {ANNA}" in words.summary


def test_smtp_check_notes_in_words_greylisting_the_standing_and_any_other() -> None:
    from schemas.events import SmtpCheck

    def summary(check: str, result: str) -> str:
        words = describe(SmtpCheck(session_id="s1", client_ip="192.0.2.7", phase="connect", check=check,
                                   result=result))
        assert words is not None and words.component == "ingress"
        return words.summary

    assert summary("reputation", "allowlisted") == "Reputation checks not applied: the client is on the allowlist"
    assert summary("greylist", "passed") == "Greylisting: passed (this server and sender passed before)"
    assert summary("fcrdns", "fail") == "SMTP check fcrdns at connect: fail"
