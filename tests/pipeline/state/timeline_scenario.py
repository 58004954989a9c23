"""One message's whole trail as the pipeline writes it, plus the noise around it, with fixed times.

A spam from mx.ext.test (127.0.2.20) to lena: greylisted once, passed on the retry, held by the spam
stage, listed in lena's digest, released from the CLI, delivered. Around it: an older message of the
same client, sender and recipient (greylisted and passed the day before: not this message's), another
session of the same client, another message. The timeline tests and the analytics source test share it.
"""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.state.quarantine import entry_id
from schemas.events import (
    BlobRef,
    Client,
    Delivered,
    DeliveryAttempt,
    DigestSent,
    Envelope,
    Event,
    HeaderSummary,
    Held,
    MessageOutcome,
    QuarantineAction,
    Quarantined,
    Received,
    Reply,
    Result,
    Routed,
    SmtpCheck,
    SmtpConnect,
    SmtpReject,
    StageResult,
    Verdict,
)

IP, SENDER, LENA, ANNA = "127.0.2.20", "winner@ext.test", "lena.mueller@school.test", "anna.schmidt@school.test"
MID, OTHER_MID = "0191a0b0-0000-7000-8000-00000000aaaa", "0191a0b0-0000-7000-8000-00000000bbbb"
HEADER = "<prize-1@ext.test>"
GREYLISTED = Reply(code=451, enhanced="4.7.1", text="Greylisted, please try again in 2 seconds")


def at(seconds: float) -> str:
    """A time on 2026-12-03 from 10:00:00 on."""
    minutes, secs = divmod(seconds, 60)
    return f"2026-12-03T10:{int(minutes):02d}:{secs:06.3f}Z"


def yesterday(seconds: float) -> str:
    return at(seconds).replace("2026-12-03", "2026-12-02")


@dataclass
class Scenario:
    events: list[Event]  # in the order the pipeline wrote them
    entry: str  # lena's quarantine entry
    noise: set[str]  # ids of the events that are not this message's


def greylist_attempt(session: str, when: str, result: str = "delayed") -> list[Event]:
    check = SmtpCheck(session_id=session, client_ip=IP, phase="rcpt", check="greylist", result=result,
                      sender=SENDER, recipient=LENA, time=when)
    if result in ("passed", "passed_after_retry"):
        return [check]
    return [check, SmtpReject(session_id=session, client_ip=IP, phase="rcpt", check="greylist",
                              reason_code="greylisted", reply=GREYLISTED, sender=SENDER, recipient=LENA, time=when)]


def scenario() -> Scenario:
    noise: list[Event] = [
        SmtpConnect(session_id="s-old", client_ip=IP, client_port=1000, time=yesterday(0)),
        *greylist_attempt("s-old", yesterday(0)),
        *greylist_attempt("s-old2", yesterday(5), "passed_after_retry"),
        SmtpConnect(session_id="s-other", client_ip=IP, client_port=1001, time=at(1)),
        SmtpCheck(session_id="s-other", client_ip=IP, phase="rcpt", check="greylist", result="delayed",
                  sender="someone@ext.test", recipient=LENA, time=at(1)),
    ]
    first = [SmtpConnect(session_id="s1", client_ip=IP, client_port=2000, time=at(2)),
             SmtpCheck(session_id="s1", client_ip=IP, phase="connect", check="dnsbl", result="pass", time=at(2)),
             *greylist_attempt("s1", at(2.5))]
    received = Received(message_id=MID, time=at(5.1), session_id="s2",
                        envelope=Envelope(mail_from=SENDER, rcpt_to=[LENA]),
                        client=Client(ip=IP, port=2001, helo="mx.ext.test"), blob=BlobRef(sha256="ab" * 32, size=900),
                        headers=HeaderSummary(subject="EARN MONEY FROM HOME TODAY", message_id_header=HEADER))
    retry = [SmtpConnect(session_id="s2", client_ip=IP, client_port=2001, time=at(5)),
             SmtpCheck(session_id="s2", client_ip=IP, phase="connect", check="dnsbl", result="pass", time=at(5)),
             *greylist_attempt("s2", at(5.05), "passed_after_retry"), received]
    results = [Result(stage="blocklist", verdict=Verdict.PASS, duration_ms=3.2),
               Result(stage="virus", verdict=Verdict.PASS, duration_ms=20.5, details={"engine": "clamd"}),
               Result(stage="spam", verdict=Verdict.FAIL, score=9.1, duration_ms=41.0,
                      details={"score": 9.1, "actions": [{"recipient": LENA, "action": "quarantine"}]})]
    stages = [StageResult(message_id=MID, time=at(5.2 + i / 10), result=r, message=received, recipients=[LENA],
                          history=results[:i]) for i, r in enumerate(results[:2])]
    held = Quarantined(message_id=MID, time=at(5.5), stage="spam", reason="spam: WORK_FROM_HOME, LINK_TO_IP (score 9.1, probability 91%)", recipients=[LENA],
                       message=received, results=results)
    outcome = MessageOutcome(message_id=MID, time=at(5.5), stage="spam", disposition="quarantined",
                             recipients=[LENA])
    entry = entry_id(held.id, LENA)
    unrelated = Received(message_id=OTHER_MID, time=at(6), session_id="s3",
                         envelope=Envelope(mail_from="x@ext.test", rcpt_to=[ANNA]), client=Client(ip=IP, port=3),
                         blob=BlobRef(sha256="cd" * 32, size=10))
    digest = DigestSent(message_id="digest-1", user=LENA, entries=["ffffffffffffffffffff", entry], time=at(30))
    # the release: the copy is made first (a millisecond earlier), then the action, in one transaction
    copy = StageResult(message_id=MID, time=at(59.999), result=results[2], message=received, recipients=[LENA],
                       history=results[:2])
    release = QuarantineAction(message_id=MID, time=at(60), entry=entry, recipient=LENA, action="release",
                               by="cli:root@mx1", released_as=MID, topic="poststelle.checked.spam")
    route = Result(stage="route", verdict=Verdict.PASS, duration_ms=0.4)
    after = [StageResult(message_id=MID, time=at(60.2), result=route, message=received, recipients=[],
                         history=results),
             Routed(message_id=MID, time=at(60.2), destination="lmtp", recipients=[LENA], message=received),
             DeliveryAttempt(message_id=MID, time=at(60.3), destination="lmtp", recipient=LENA, attempt=1,
                             reply=Reply(code=250, enhanced="2.0.0", text="Saved"), duration_ms=12.0),
             Delivered(message_id=MID, time=at(60.3), destination="lmtp", recipient=LENA, attempt=1,
                       reply=Reply(code=250, enhanced="2.0.0", text="Saved"))]
    events = [*noise, *first, *retry, *stages, held, outcome, unrelated, digest, copy, release, *after]
    return Scenario(events=events, entry=entry, noise={e.id for e in [*noise, unrelated]})


def held_part_scenario() -> tuple[list[Event], str]:
    """An attachment held for anna and released: the copy travels under a derived message id."""
    received = Received(message_id=OTHER_MID, time=at(1), session_id="s9",
                        envelope=Envelope(mail_from=SENDER, rcpt_to=[ANNA]), client=Client(ip="127.0.0.1", port=9),
                        blob=BlobRef(sha256="ef" * 32, size=5000))
    held = Held(message_id=OTHER_MID, time=at(1.5), stage="attachment", part="2", sha256="00" * 32,
                filename="invoice.exe", content_type="application/octet-stream", reasons=["executable"],
                recipients=[ANNA], message=received)
    entry = entry_id(held.id, ANNA)
    copy_id = "0191a0b0-0000-7000-8000-00000000cccc"
    copy_msg = Received(message_id=copy_id, time=received.time, session_id="s9", envelope=received.envelope,
                        client=received.client, blob=received.blob)
    copy = StageResult(message_id=copy_id, time=at(90), message=copy_msg, recipients=[ANNA],
                       result=Result(stage="attachment", verdict=Verdict.PASS, details={"released": entry}))
    approve = QuarantineAction(message_id=OTHER_MID, time=at(90), entry=entry, recipient=ANNA, action="approve",
                               by="admin:root@school.test", released_as=copy_id,
                               topic="poststelle.checked.attachment")
    delivered = Delivered(message_id=copy_id, time=at(91), destination="lmtp", recipient=ANNA, attempt=1,
                          reply=Reply(code=250, text="Saved"))
    return [received, held, copy, approve, delivered], copy_id
