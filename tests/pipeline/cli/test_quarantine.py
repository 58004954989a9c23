"""`poststelle quarantine` without a broker: naming an entry, the listing's columns, the arguments.

(Against the real stack: tests/integration/test_trace.py acts on entries, test_attachment.py lists and
gets held parts.)
"""
from __future__ import annotations

import pytest

from pipeline.cli import build_parser
from pipeline.cli.quarantine import cmd_act, cmd_list, cmd_show, entry_rows, find
from pipeline.state.quarantine import QuarantineError, QuarantineState
from schemas.events import Quarantined
from tests.pipeline.state.timeline_scenario import ANNA, LENA, MID, OTHER_MID, held_part_scenario, scenario


def state() -> QuarantineState:
    s = QuarantineState(lifetime=30 * 86_400, approval=["attachment"])
    held = next(e for e in scenario().events if isinstance(e, Quarantined))
    s.apply_event(held)
    part_events, _ = held_part_scenario()
    s.apply_event(part_events[1])
    return s


def test_an_entry_is_named_by_its_id_a_prefix_or_a_message_held_for_one_recipient() -> None:
    s = state()
    [lena] = s.for_recipient(LENA)
    assert find(s, lena.id) is lena
    assert find(s, lena.id[:6]) is lena
    assert find(s, MID) is lena
    assert find(s, OTHER_MID).recipient == ANNA
    with pytest.raises(QuarantineError, match="no such entry"):
        find(s, "nothing-like-it")
    with pytest.raises(QuarantineError, match="no such entry"):
        find(s, lena.id[:5])  # too short to be a prefix


def test_a_message_held_for_several_recipients_needs_the_entry_id() -> None:
    s = state()
    held = next(e for e in scenario().events if isinstance(e, Quarantined))
    s.apply_event(Quarantined(message_id="two", stage="spam", reason="spam", recipients=[LENA, ANNA],
                              message=held.message, results=held.results))
    with pytest.raises(QuarantineError, match=f"two names several entries: .*{LENA}.*{ANNA}"):
        find(s, "two")


def test_the_listing_keeps_the_old_columns_first_and_adds_the_entry() -> None:
    columns, rows = entry_rows(state().search())
    assert columns[:7] == ["time", "message_id", "type", "stage", "part", "filename", "reason"]
    part = next(dict(zip(columns, row, strict=True)) for row in rows if row[1] == OTHER_MID)
    assert (part["type"], part["stage"], part["part"], part["filename"], part["recipient"], part["category"],
            part["status"]) == ("held", "attachment", "2", "invoice.exe", ANNA, "attachment", "held")


@pytest.mark.parametrize("argv, func, fields", [
    (["quarantine"], cmd_list, {"status": "open", "json": False}),
    (["quarantine", "list", "--category", "spam", "--older-than", "7d", "--json"], cmd_list,
     {"category": "spam", "older_than": "7d", "json": True}),
    (["quarantine", "show", "abc123", "--details"], cmd_show, {"entry": "abc123", "details": True}),
    (["quarantine", "release", "abc123", "--learn-ham", "--allow-sender"], cmd_act,
     {"action": "release", "learn_ham": True, "allow_sender": True}),
    (["quarantine", "approve", "abc123"], cmd_act, {"action": "approve", "entry": "abc123"}),
    (["quarantine", "delete", "abc123"], cmd_act, {"action": "delete"}),
])
def test_the_arguments(argv, func, fields) -> None:
    args = build_parser().parse_args(argv)
    assert args.func is func
    assert {k: getattr(args, k) for k in fields} == fields


def test_unknown_categories_and_statuses_are_refused() -> None:
    for argv in (["quarantine", "list", "--category", "ham"], ["quarantine", "list", "--status", "gone"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(argv)
