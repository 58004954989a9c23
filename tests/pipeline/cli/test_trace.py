"""`poststelle trace` without a store: what the arguments mean, and the text it prints.

(`poststelle trace` against a real store: tests/consumers/sinks/analytics/test_timeline_source.py;
against the whole stack: tests/integration/test_trace.py.)
"""
from __future__ import annotations

import argparse

import pytest

from pipeline.cli import build_parser
from pipeline.cli.trace import format_timeline, parse_time, request_of
from pipeline.state.timeline import build_timeline
from pipeline.state.timeline_source import TraceRequest
from schemas.events import epoch_from_iso
from tests.pipeline.state.timeline_scenario import LENA, MID, scenario

NOW = epoch_from_iso("2026-12-03T12:00:00.000Z")


def args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["trace", *argv])


def test_times_are_durations_ago_or_iso_times_in_utc_unless_they_say() -> None:
    assert parse_time("2h", NOW) == NOW - 7200
    assert parse_time("7d", NOW) == NOW - 7 * 86_400
    assert parse_time("2026-12-03", NOW) == epoch_from_iso("2026-12-03T00:00:00.000Z")
    assert parse_time("2026-12-03T10:30", NOW) == epoch_from_iso("2026-12-03T10:30:00.000Z")
    assert parse_time("2026-12-03T10:30+01:00", NOW) == epoch_from_iso("2026-12-03T09:30:00.000Z")
    with pytest.raises(ValueError, match="expected a duration such as 2h"):
        parse_time("yesterday", NOW)


def test_an_id_is_a_message_id_a_header_or_a_recipient_with_a_range() -> None:
    assert request_of(args(MID)) == TraceRequest(message_id=MID)
    assert request_of(args("<a1@example.org>")) == TraceRequest(header="<a1@example.org>")
    assert request_of(args("a1@example.org")) == TraceRequest(header="a1@example.org")
    by_rcpt = request_of(args("--recipient", LENA, "--since", "2026-12-01", "--until", "2026-12-02"))
    assert (by_rcpt.recipient, by_rcpt.since, by_rcpt.until) == (
        LENA, epoch_from_iso("2026-12-01T00:00:00.000Z"), epoch_from_iso("2026-12-02T00:00:00.000Z"))
    assert request_of(args("--recipient", LENA)).since > 0  # the last day by default
    for wrong in ((), (MID, "--recipient", LENA)):
        with pytest.raises(ValueError):
            request_of(args(*wrong))


def test_the_text_has_a_heading_and_aligned_columns_and_details_only_when_asked() -> None:
    timeline = build_timeline(MID, scenario().events)
    text = format_timeline(timeline).splitlines()
    assert text[0] == f'message {MID}: from <winner@ext.test> to {LENA}, "EARN MONEY FROM HOME TODAY"'
    assert len(text) == 1 + len(timeline.steps)
    # 2 + time (23) + 2 + the widest component ("quarantine", 10) + 2
    assert {line.index(step.summary) for line, step in zip(text[1:], timeline.steps, strict=True)} == {39}
    assert text[2] == "  2026-12-03 10:00:05.000  ingress     Connection from 127.0.2.20 (smtp)"
    detailed = format_timeline(timeline, details=True).splitlines()
    assert detailed[detailed.index(text[2]) + 1:][:3] == [" " * 39 + "session: s2", " " * 39 + "client_ip: 127.0.2.20",
                                                         " " * 39 + "client_port: 2001"]
