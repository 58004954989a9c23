"""A message's timeline built from a list of events (pipeline/state/timeline.py and timeline_words.py).

The events are those the pipeline writes (tests/pipeline/state/timeline_scenario.py); the pool is
shuffled, so the order of the steps comes from the builder, not from the list.
"""
from __future__ import annotations

import random
from dataclasses import replace

import orjson

from pipeline.state.timeline import build_timeline
from pipeline.state.timeline_source import LogSource, TraceRequest, trace
from schemas.events import SmtpReject, decode_event, encode_event, epoch_from_iso
from tests.pipeline.state.timeline_scenario import (
    ANNA,
    HEADER,
    LENA,
    MID,
    OTHER_MID,
    at,
    held_part_scenario,
    scenario,
)


def shuffled(events: list) -> list:
    pool = list(events)
    random.Random(12).shuffle(pool)
    return pool


def test_the_steps_come_in_the_order_they_happened_from_the_greylisted_attempt_to_the_delivery() -> None:
    s = scenario()
    timeline = build_timeline(MID, shuffled(s.events))
    assert [(step.component, step.type) for step in timeline.steps] == [
        ("ingress", "smtp_reject"),  # the first attempt, greylisted
        ("ingress", "smtp_connect"),  # the retry's session
        ("ingress", "smtp_check"),  # dnsbl
        ("ingress", "smtp_check"),  # greylisting passed
        ("ingress", "received"),
        ("blocklist", "stage_result"),
        ("virus", "stage_result"),
        ("spam", "quarantined"),
        ("digest", "digest_sent"),
        ("quarantine", "quarantine_action"),
        ("spam", "stage_result"),  # the released copy goes on
        ("route", "stage_result"),
        ("route", "routed"),
        ("sink:lmtp", "delivery_attempt"),
        ("sink:lmtp", "delivered"),
    ]
    summaries = [step.summary for step in timeline.steps]
    assert summaries[0] == (f"Greylisted for {LENA}: the sending server was asked to try again later "
                            "(451 4.7.1 Greylisted, please try again in 2 seconds)")
    assert summaries[3] == "Greylisting: passed, the server retried after the delay"
    assert summaries[4].startswith("Accepted from 127.0.2.20: from <winner@ext.test> to lena.mueller@school.test, "
                                   'subject "EARN MONEY FROM HOME TODAY"')
    assert summaries[6] == "The virus check passed"
    assert summaries[7] == (f"Held in quarantine by the spam check for {LENA}: "
                            "spam: WORK_FROM_HOME, LINK_TO_IP (score 9.1, probability 91%)")
    assert summaries[8] == f"Listed in the quarantine digest mailed to {LENA}"
    assert summaries[9] == f"Released for {LENA} by cli:root@mx1"
    assert summaries[10] == f"The released copy for {LENA} goes on after the spam check"
    assert summaries[-1] == f"Delivered to {LENA} (250 2.0.0 Saved)"
    times = [step.time for step in timeline.steps]
    assert times == sorted(times)  # the copy shows its release's time, not its own earlier one
    assert timeline.steps[10].time == timeline.steps[9].time
    assert (timeline.subject, timeline.sender, timeline.recipients) == ("EARN MONEY FROM HOME TODAY",
                                                                       "winner@ext.test", [LENA])


def test_a_reason_without_the_score_gets_it_from_the_stage_result() -> None:
    s = scenario()
    held = next(e for e in s.events if e.type == "quarantined")
    events = [replace(e, reason="spam") if e is held else e for e in s.events]
    [step] = [x for x in build_timeline(MID, events).steps if x.type == "quarantined"]
    assert step.summary == f"Held in quarantine by the spam check for {LENA} (score 9.1): spam"


def test_the_details_carry_what_an_admin_needs() -> None:
    steps = build_timeline(MID, scenario().events).steps
    virus = next(s for s in steps if s.component == "virus")
    assert virus.details == {"verdict": "pass", "score": 0.0, "duration_ms": 20.5, "details": {"engine": "clamd"},
                             "recipients": [LENA], "edits": [], "replacements": []}
    held = next(s for s in steps if s.type == "quarantined")
    assert held.details["result"]["score"] == 9.1 and held.details["result"]["duration_ms"] == 41.0
    assert held.details["result"]["details"]["actions"] == [{"recipient": LENA, "action": "quarantine"}]
    release = next(s for s in steps if s.type == "quarantine_action")
    assert release.details["by"] == "cli:root@mx1" and release.details["released_as"] == MID
    orjson.dumps([s.as_dict() for s in steps])  # JSON all the way down


def test_events_of_other_messages_and_sessions_are_left_out() -> None:
    s = scenario()
    timeline = build_timeline(MID, s.events)
    assert not {step.event_id for step in timeline.steps} & s.noise
    # the greylisting of the day before belonged to the message that passed then
    assert all(step.time.startswith("2026-12-03") for step in timeline.steps)
    assert [step.type for step in timeline.steps].count("smtp_reject") == 1


def test_a_greylisted_attempt_counts_only_for_the_same_client_sender_and_recipient() -> None:
    s = scenario()
    moved = [e for e in s.events if not isinstance(e, SmtpReject) or e.session_id != "s1"]
    elsewhere = [e for e in s.events if isinstance(e, SmtpReject) and e.session_id == "s1"]
    moved += [replace(e, client_ip="127.0.2.21") for e in elsewhere]
    assert "smtp_reject" not in [step.type for step in build_timeline(MID, moved).steps]


def test_a_released_part_is_followed_to_the_delivery_of_its_copy() -> None:
    events, copy_id = held_part_scenario()
    timeline = build_timeline(OTHER_MID, shuffled(events))
    assert timeline.copies == [copy_id]
    assert [step.summary for step in timeline.steps] == [
        f"Accepted from 127.0.0.1: from <winner@ext.test> to {ANNA}, 5000 bytes",
        f"Attachment 'invoice.exe' (part 2) held in quarantine for {ANNA}: executable; the rest of the message went on",
        f"Release approved for {ANNA} by admin:root@school.test",
        f"The released copy for {ANNA} goes on after the attachment check",
        f"Delivered to {ANNA} (250 Saved)",
    ]
    assert timeline.steps[-1].message_id == copy_id


def test_an_unknown_message_has_no_steps() -> None:
    assert build_timeline("no-such-id", scenario().events).steps == []


def test_the_log_source_finds_messages_by_header_and_by_recipient_in_a_time_range() -> None:
    s = scenario()
    source = LogSource([decode_event(encode_event(e)) for e in s.events])
    assert source.find(TraceRequest(header=HEADER)) == [MID]
    assert source.find(TraceRequest(header=HEADER.strip("<>"))) == [MID]
    start = epoch_from_iso(at(0))
    assert source.find(TraceRequest(recipient=LENA.upper(), since=start)) == [MID]
    assert source.find(TraceRequest(recipient=ANNA, since=start)) == [OTHER_MID]
    assert source.find(TraceRequest(recipient=LENA, since=start, until=epoch_from_iso(at(4)))) == []
    assert source.find(TraceRequest(recipient=LENA, since=epoch_from_iso(at(50)))) == [MID]  # delivered then
    timelines = trace(source, TraceRequest(header=HEADER))
    assert [t.message_id for t in timelines] == [MID]


def test_more_messages_than_one_request_traces_gives_the_newest() -> None:
    from pipeline.state.timeline_source import MAX_MESSAGES
    from schemas.events import Client, Envelope, Received
    from schemas.parts import BlobRef
    events = [Received(message_id=f"m{i:03d}", time=at(i), envelope=Envelope(mail_from="a@ext.test", rcpt_to=[LENA]),
                       client=Client(ip="192.0.2.1", port=1), blob=BlobRef(sha256="0" * 64, size=1))
              for i in range(MAX_MESSAGES + 10)]
    found = LogSource(shuffled(events)).find(TraceRequest(recipient=LENA, since=epoch_from_iso(at(0))))
    assert found == [f"m{i:03d}" for i in range(10, MAX_MESSAGES + 10)]
