"""Rendering: the stored message plus the stages' edits, the blob itself never changed."""
from __future__ import annotations

import pytest

from pipeline.mail.render import render
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

# ---- replace_part --------------------------------------------------------------------------------

import hashlib  # noqa: E402

from pipeline.mail.mime import leaf_at, walk  # noqa: E402
from pipeline.mail.render import PartNotFound  # noqa: E402

EXE = (b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
       b'Content-Disposition: attachment; filename="a.pdf.exe"\r\n\r\nTVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAA\r\n')
MULTI = (
    b"From: Alice <alice@ext.test>\r\nSubject: Rechnung\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="xyz"\r\n\r\npreamble\r\n'
    b"--xyz\r\nContent-Type: text/plain\r\n\r\nHallo,\r\nanbei.\r\n"
    b"--xyz\r\n" + EXE +
    b"--xyz\r\nContent-Type: application/pdf; name=ok.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERg==\r\n"
    b"--xyz--\r\nepilogue\r\n"
)


def _replace(raw: bytes, path: str, text: str = "held: a.pdf.exe") -> Edit:
    part = leaf_at(walk(raw), path)
    return Edit(stage="attachment", kind="replace_part", part=path,
                sha256=hashlib.sha256(part.body(raw)).hexdigest(), value=text)


def test_replace_part_splices_a_notice_and_keeps_every_other_byte():
    out = render(MULTI, [_replace(MULTI, "2")])
    start = MULTI.index(EXE)
    end = start + len(EXE) - 2  # the CRLF before the next delimiter stays
    notice = (b"Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n"
              b"Content-Disposition: inline\r\n\r\nheld: a.pdf.exe")
    assert out == MULTI[:start] + notice + MULTI[end:]
    parts = walk(out)
    assert [(p.path, p.content_type) for p in parts if p.is_leaf] == [
        ("1", "text/plain"), ("2", "text/plain"), ("3", "application/pdf")]
    assert leaf_at(parts, "2").body(out) == b"held: a.pdf.exe"


def test_a_non_ascii_notice_is_quoted_printable_utf8():
    out = render(MULTI, [_replace(MULTI, "2", "zurückgehalten: Prüfung.exe\nZeile 2")])
    assert b"charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable" in out
    assert b"zur=C3=BCckgehalten: Pr=C3=BCfung.exe\r\nZeile 2\r\n--xyz" in out


def test_the_part_is_found_after_headers_were_added_on_top():
    edits = [Edit(stage="x", kind="add_header", name="X-Before", value="1"), _replace(MULTI, "2")]
    out = render(MULTI, edits)
    assert out.startswith(b"X-Before: 1\r\n" + MULTI[:MULTI.index(EXE)])
    assert b"a.pdf.exe\"" not in out


def test_two_parts_replaced_in_one_message():
    out = render(MULTI, [_replace(MULTI, "2", "one"), _replace(MULTI, "3", "two")])
    leaves = [p for p in walk(out) if p.is_leaf]
    assert [p.body(out) for p in leaves] == [b"Hallo,\r\nanbei.", b"one", b"two"]
    assert out.endswith(b"--xyz--\r\nepilogue\r\n")


def test_a_single_part_message_keeps_its_header_fields():
    raw = (b"From: a@ext.test\r\nSubject: s\r\nContent-Type: application/x-msdownload;\r\n name=\"a.exe\"\r\n"
           b"Content-Transfer-Encoding: base64\r\nX-After: kept\r\n\r\nTVo=\r\n")
    out = render(raw, [_replace(raw, "1", "held")])
    assert out == (b"From: a@ext.test\r\nSubject: s\r\nX-After: kept\r\n"
                   b"Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n"
                   b"Content-Disposition: inline\r\n\r\nheld\r\n")


def test_the_body_of_an_encapsulated_message_keeps_its_header_fields():
    inner = b"Subject: inner\r\nContent-Type: application/octet-stream; name=x.exe\r\n\r\nMZ\r\n"
    raw = (b'Content-Type: multipart/mixed; boundary="o"\r\n\r\n--o\r\nContent-Type: message/rfc822\r\n\r\n'
           + inner + b"--o--\r\n")
    out = render(raw, [_replace(raw, "1.1", "held")])
    assert out == (b'Content-Type: multipart/mixed; boundary="o"\r\n\r\n--o\r\nContent-Type: message/rfc822\r\n\r\n'
                   b"Subject: inner\r\nContent-Type: text/plain; charset=us-ascii\r\n"
                   b"Content-Transfer-Encoding: 7bit\r\nContent-Disposition: inline\r\n\r\nheld\r\n--o--\r\n")


def test_a_part_that_is_not_there_fails_instead_of_delivering_it():
    edit = _replace(MULTI, "2")
    with pytest.raises(PartNotFound):
        render(MULTI.replace(b"TVqQ", b"XXXX"), [edit])


def test_a_moved_part_is_found_by_its_bytes():
    edit = _replace(MULTI, "2")
    moved = MULTI.replace(b"--xyz\r\nContent-Type: text/plain\r\n\r\nHallo", b"--xyz\r\n\r\nA\r\n--xyz\r\nContent-Type: text/plain\r\n\r\nHallo")
    out = render(moved, [edit])
    assert [p.path for p in walk(out) if p.is_leaf and p.body(out) == b"held: a.pdf.exe"] == ["3"]
