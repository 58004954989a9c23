"""Rendering: the stored message plus the stages' edits, the blob itself never changed."""
from __future__ import annotations

import pytest

from consumers.sinks.render import render
from schemas.events import Edit

RAW = (
    b"From: Alice <alice@ext.test>\r\n"
    b"Subject: Klassenfahrt\r\n"
    b"To: bob@school.test\r\n"
    b"\r\n"
    b"Subject: this line is body, not a header\r\n"
)


def test_no_edits_returns_the_message_unchanged():
    assert render(RAW, []) == RAW


def test_add_header_goes_on_top():
    out = render(RAW, [Edit(stage="spam", kind="add_header", name="X-Spam-Score", value="7.5")])
    assert out == b"X-Spam-Score: 7.5\r\n" + RAW


def test_header_values_cannot_inject_lines():
    edit = Edit(stage="spam", kind="add_header", name="X-Note", value="a\r\nBcc: evil@ext.test\n  b\tc")
    out = render(RAW, [edit])
    first, _, rest = out.partition(b"\r\n")
    assert first == b"X-Note: a Bcc: evil@ext.test b c"
    assert rest == RAW


def test_non_ascii_header_value_is_utf8():
    out = render(RAW, [Edit(stage="x", kind="add_header", name="X-Grund", value="Prüfung")])
    assert out.startswith("X-Grund: Prüfung\r\n".encode())


def test_subject_tag_is_put_in_front_of_the_header_subject_only():
    out = render(RAW, [Edit(stage="spam", kind="subject_tag", value="[SPAM]")])
    assert b"\r\nSubject: [SPAM] Klassenfahrt\r\n" in out
    assert out.endswith(b"\r\n\r\nSubject: this line is body, not a header\r\n")
    assert len(out) == len(RAW) + len(b"[SPAM] ")


def test_subject_tag_matches_the_header_name_case_insensitively():
    raw = b"SUBJECT:Hallo\r\n\r\nbody\r\n"
    assert render(raw, [Edit(stage="spam", kind="subject_tag", value="[SPAM]")]) == (
        b"SUBJECT:[SPAM] Hallo\r\n\r\nbody\r\n")


def test_subject_tag_without_a_subject_adds_one():
    raw = b"From: a@ext.test\r\n\r\nSubject: body line\r\n"
    out = render(raw, [Edit(stage="spam", kind="subject_tag", value="[SPAM]")])
    assert out == b"Subject: [SPAM]\r\n" + raw


def test_subject_tag_does_not_match_other_headers_ending_in_subject():
    raw = b"X-Original-Subject: old\r\nSubject: new\r\n\r\nx\r\n"
    out = render(raw, [Edit(stage="spam", kind="subject_tag", value="[SPAM]")])
    assert out == b"X-Original-Subject: old\r\nSubject: [SPAM] new\r\n\r\nx\r\n"


def test_headers_only_message():
    raw = b"Subject: only headers\r\n"
    assert render(raw, [Edit(stage="s", kind="subject_tag", value="[T]")]) == b"Subject: [T] only headers\r\n"


def test_edits_apply_in_recorded_order():
    edits = [
        Edit(stage="spam", kind="add_header", name="X-A", value="1"),
        Edit(stage="virus", kind="add_header", name="X-B", value="2"),
        Edit(stage="spam", kind="subject_tag", value="[SPAM]"),
        Edit(stage="attachment", kind="subject_tag", value="[ATT]"),
    ]
    out = render(RAW, edits)
    assert out.startswith(b"X-B: 2\r\nX-A: 1\r\nFrom: ")  # each new header on top of the last
    assert b"Subject: [ATT] [SPAM] Klassenfahrt\r\n" in out


def test_the_input_bytes_are_not_modified():
    raw = bytearray(RAW)
    render(bytes(raw), [Edit(stage="spam", kind="subject_tag", value="[SPAM]")])
    assert bytes(raw) == RAW


def test_unknown_edit_kind_is_an_error():
    with pytest.raises(ValueError, match="unknown edit kind"):
        render(RAW, [Edit(stage="x", kind="rewrite_body", value="")])  # type: ignore[arg-type]


# ---- remove_header (the auth stage drops forged Authentication-Results) ---------------------------

FORGED = (
    b"Received: from x by y\r\n"
    b"Authentication-Results: MX.school.test; dkim=pass\r\n"
    b"\theader.d=good.test\r\n"
    b"Authentication-Results: mx.school.test.evil; spf=pass\r\n"
    b"authentication-results:mx.school.test;dmarc=pass\r\n"
    b"Subject: hi\r\n"
    b"\r\n"
    b"Authentication-Results: mx.school.test; this is body\r\n"
)


def test_remove_header_drops_only_fields_with_that_first_word_and_their_folded_lines():
    edit = Edit(stage="auth", kind="remove_header", name="Authentication-Results", value="mx.school.test")
    assert render(FORGED, [edit]) == (
        b"Received: from x by y\r\n"
        b"Authentication-Results: mx.school.test.evil; spf=pass\r\n"
        b"Subject: hi\r\n"
        b"\r\n"
        b"Authentication-Results: mx.school.test; this is body\r\n"
    )


def test_remove_header_without_value_drops_every_field_of_that_name():
    out = render(RAW, [Edit(stage="x", kind="remove_header", name="subject")])
    assert out == b"From: Alice <alice@ext.test>\r\nTo: bob@school.test\r\n\r\nSubject: this line is body, not a header\r\n"


def test_a_header_longer_than_998_octets_is_folded_after_semicolons():
    value = "; ".join(["mx.school.test"] + [f"dkim=pass header.d=d{i}.test header.s=sel" for i in range(40)])
    out = render(RAW, [Edit(stage="auth", kind="add_header", name="Authentication-Results", value=value)])
    head = out.split(b"\r\n\r\n")[0]
    assert all(len(line) <= 998 for line in head.split(b"\r\n"))
    assert out.count(b";\r\n\tdkim=pass") == 40
