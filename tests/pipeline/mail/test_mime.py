"""The byte-level MIME walker: offsets, paths, decoded names, encapsulated messages, caps."""
from __future__ import annotations

import base64
import email.policy
import time
from email.message import EmailMessage

import pytest

from pipeline.mail.mime import MimeLimitExceeded, decode_body, leaf_at, walk


def _multipart(boundary: str, parts: list[bytes], preamble: bytes = b"", epilogue: bytes = b"",
               close: bool = True, head: bytes = b"From: a@ext.test\r\nSubject: t\r\n") -> bytes:
    body = preamble
    for part in parts:
        body += f"\r\n--{boundary}\r\n".encode() + part
    if close:
        body += f"\r\n--{boundary}--\r\n".encode() + epilogue
    return (head + f'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'.encode()
            + body)


TEXT = b"Content-Type: text/plain\r\n\r\nHallo Max,\r\nanbei die Rechnung.\r\n"
PDF = (b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
       b'Content-Disposition: attachment; filename="rechnung.pdf"\r\n\r\n'
       + base64.encodebytes(b"%PDF-1.4 " + b"x" * 100).replace(b"\n", b"\r\n"))


def _attachment(disposition: bytes, content_type: bytes = b"application/octet-stream") -> bytes:
    return (b"Content-Type: " + content_type + b"\r\nContent-Disposition: " + disposition
            + b"\r\nContent-Transfer-Encoding: base64\r\n\r\nTVo=")


# ---- structure and offsets ---------------------------------------------------------------------


def test_parts_are_located_by_byte_offsets_without_copying():
    raw = _multipart("b1", [TEXT, PDF], preamble=b"This is MIME.", epilogue=b"trailing words\r\n")
    parts = walk(raw)
    assert [(p.path, p.kind, p.content_type) for p in parts] == [
        ("", "multipart", "multipart/mixed"), ("1", "leaf", "text/plain"), ("2", "leaf", "application/pdf")]
    text, pdf = parts[1], parts[2]
    assert raw[text.start:text.end] == TEXT  # the CRLF before "--b1" belongs to the delimiter
    assert text.body(raw) == b"Hallo Max,\r\nanbei die Rechnung.\r\n"
    assert raw[pdf.start:pdf.end] == PDF
    assert raw[pdf.start:pdf.header_end].endswith(b'filename="rechnung.pdf"\r\n')
    assert pdf.filename == "rechnung.pdf" and pdf.disposition == "attachment"
    assert decode_body(raw, pdf) == b"%PDF-1.4 " + b"x" * 100
    assert decode_body(raw, pdf, limit=4) == b"%PDF"


def test_a_single_part_message_is_part_1_and_a_message_root():
    raw = b"From: a@ext.test\r\nContent-Type: application/pdf; name=a.pdf\r\n\r\n%PDF\r\n"
    (part,) = walk(raw)
    assert (part.path, part.kind, part.message_root, part.name) == ("1", "leaf", True, "a.pdf")
    assert part.body(raw) == b"%PDF\r\n"


def test_lf_only_messages_and_parts_without_headers():
    raw = (b"Content-Type: multipart/mixed; boundary=x\n\n--x\n\nno headers here\n--x\n"
           b"Content-Type: text/html\n\n<p>hi</p>\n--x--\n")
    parts = walk(raw)
    assert [p.content_type for p in parts] == ["multipart/mixed", "text/plain", "text/html"]
    assert parts[1].body(raw) == b"no headers here"
    assert parts[2].body(raw) == b"<p>hi</p>"


def test_a_longer_boundary_that_starts_like_ours_is_not_a_delimiter():
    inner = (b'Content-Type: multipart/alternative; boundary="b1-inner"\r\n\r\n--b1-inner\r\n' + TEXT
             + b"\r\n--b1-inner--")
    raw = _multipart("b1", [inner, PDF])
    assert [p.path for p in walk(raw)] == ["", "1", "1.1", "2"]


def test_an_unclosed_multipart_runs_to_the_end():
    raw = _multipart("b1", [TEXT, PDF], close=False)
    parts = walk(raw)
    assert parts[-1].path == "2" and parts[-1].end == len(raw)


def test_a_multipart_without_boundary_is_a_leaf_with_a_defect():
    raw = b"Content-Type: multipart/mixed\r\n\r\n--x\r\n\r\nbody\r\n"
    (part,) = walk(raw)
    assert part.is_leaf and "multipart_without_boundary" in part.defects


def test_nested_messages_are_numbered_like_imap():
    inner_single = b"Subject: inner\r\nContent-Type: application/octet-stream; name=\"x.exe\"\r\n\r\nMZ\r\n"
    inner_multi = _multipart("in2", [TEXT, PDF], head=b"Subject: inner 2\r\n")
    raw = _multipart("out", [TEXT, b"Content-Type: message/rfc822\r\n\r\n" + inner_single,
                             b"Content-Type: message/rfc822\r\n\r\n" + inner_multi])
    parts = walk(raw)
    leaves = [(p.path, p.content_type, p.message_root) for p in parts if p.is_leaf]
    assert leaves == [("1", "text/plain", False), ("2.1", "application/octet-stream", True),
                      ("3.1", "text/plain", False), ("3.2", "application/pdf", False)]
    assert leaf_at(parts, "2.1").name == "x.exe"
    assert leaf_at(parts, "2.1").body(raw) == b"MZ\r\n"
    assert max(p.depth for p in parts) == 3


def test_a_transfer_encoded_message_part_is_a_leaf():
    raw = _multipart("o", [b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\nU3ViamVjdDogeA=="])
    assert walk(raw)[1].is_leaf


def test_digest_parts_default_to_messages():
    raw = (b'Content-Type: multipart/digest; boundary="d"\r\n\r\n--d\r\n\r\nSubject: one\r\n\r\nbody\r\n--d--\r\n')
    parts = walk(raw)
    assert [p.kind for p in parts] == ["multipart", "message", "leaf"]


def test_the_stdlib_agrees_on_a_real_message():
    msg = EmailMessage()
    msg["Subject"] = "Bericht"
    msg.set_content("Hallo\n")
    msg.add_alternative("<p>Hallo</p>", subtype="html")
    msg.add_attachment(b"\x00\x01binary", maintype="application", subtype="octet-stream", filename="daten.bin")
    raw = msg.as_bytes(policy=email.policy.SMTP)
    parts = walk(raw)
    ours = [(p.content_type, p.filename) for p in parts]
    theirs = [(p.get_content_type(), p.get_filename() or "") for p in msg.walk()]
    assert ours == theirs
    leaf = next(p for p in parts if p.filename == "daten.bin")
    assert decode_body(raw, leaf) == b"\x00\x01binary"


# ---- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize("disposition, expected", [
    (b'attachment; filename="=?UTF-8?B?UmVjaG51bmcuZXhl?="', "Rechnung.exe"),
    (b"attachment; filename==?iso-8859-1?Q?R=E4tsel=2Eexe?=", "R\u00e4tsel.exe"),
    (b"attachment; filename*=utf-8''R%C3%A4tsel.exe", "R\u00e4tsel.exe"),
    (b"attachment;\r\n filename*0*=utf-8''Rech%20nung;\r\n filename*1*=.pd;\r\n filename*2=\"f.exe\"",
     "Rech nung.pdf.exe"),
    (b"attachment; filename*=iso-8859-1'de'%E4.js", "\u00e4.js"),
    (b"attachment; filename*=x-unknown''a.exe", "a.exe"),
    (b'attachment; filename="a\\".exe"', 'a".exe'),
])
def test_file_names_are_decoded_as_clients_show_them(disposition, expected):
    raw = _multipart("b", [TEXT, _attachment(disposition)])
    assert walk(raw)[2].filename == expected


def test_the_content_type_name_is_decoded_too():
    raw = _multipart("b", [_attachment(b"attachment", b'application/octet-stream; name="=?utf-8?Q?a=2Eexe?="')])
    part = walk(raw)[1]
    assert part.name == "a.exe" and part.filename == "" and part.names == ("a.exe",)


def test_raw_utf8_and_latin1_names():
    utf8 = _multipart("b", [_attachment('attachment; filename="Prüfung.exe"'.encode())])
    latin = _multipart("b", [_attachment('attachment; filename="Prüfung.exe"'.encode("latin-1"))])
    assert walk(utf8)[1].filename == "Prüfung.exe"
    assert walk(latin)[1].filename == "Prüfung.exe"


# ---- caps --------------------------------------------------------------------------------------


def nested_message(depth: int) -> bytes:
    """`depth` levels of message/rfc822 inside multipart/mixed, an attachment at the bottom."""
    raw = b"Subject: bottom\r\nContent-Type: application/octet-stream; name=a.exe\r\n\r\nMZ\r\n"
    for level in range(depth):
        raw = _multipart(f"lvl{level}", [TEXT, b"Content-Type: message/rfc822\r\n\r\n" + raw],
                         head=f"Subject: level {level}\r\n".encode())
    return raw


def many_parts(count: int) -> bytes:
    return _multipart("many", [b"Content-Type: text/plain\r\n\r\nx"] * count)


def test_a_message_200_levels_deep_stops_at_the_depth_cap_quickly():
    raw = nested_message(200)
    started = time.process_time()
    with pytest.raises(MimeLimitExceeded) as info:
        walk(raw)
    assert info.value.reason == "too_deep" and "20 levels" in info.value.detail
    assert time.process_time() - started < 1.0


def test_depth_within_the_cap_is_walked():
    parts = walk(nested_message(5))
    assert parts[-1].name == "a.exe" and parts[-1].path == "2.2.2.2.2.1"


def test_10000_parts_stop_at_the_part_cap_quickly():
    raw = many_parts(10_000)
    started = time.process_time()
    with pytest.raises(MimeLimitExceeded) as info:
        walk(raw)
    assert info.value.reason == "too_many_parts" and "1000" in info.value.detail
    assert time.process_time() - started < 1.0


def test_caps_are_configurable():
    assert len(walk(many_parts(1500), max_parts=2000)) == 1501
    with pytest.raises(MimeLimitExceeded):
        walk(nested_message(3), max_depth=4)


def test_lines_that_only_look_like_delimiters_cost_no_python_work():
    raw = b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n\r\n' + b"--bX\r\n" * 1_000_000 + b"--b--\r\n"
    started = time.process_time()
    parts = walk(raw)
    assert [p.kind for p in parts] == ["multipart", "leaf"]
    assert time.process_time() - started < 1.0


def test_delimiters_after_many_near_misses_are_still_found():
    noise = b"--bX\r\n" * 1000
    raw = _multipart("b", [TEXT + noise, PDF, TEXT], head=b"")
    parts = walk(raw)
    assert [p.content_type for p in parts] == ["multipart/mixed", "text/plain", "application/pdf", "text/plain"]
    assert parts[1].body(raw).endswith(noise) and raw[parts[2].start:parts[2].end] == PDF


def test_only_the_first_part_of_a_huge_header_block_is_read():
    from pipeline.mail.mime import MAX_ENTITY_HEADER_BYTES

    raw = b"X-Junk: " + b"a" * MAX_ENTITY_HEADER_BYTES + b"\r\nContent-Type: application/pdf\r\n\r\n%PDF"
    started = time.process_time()
    (part,) = walk(raw)
    assert part.content_type == "text/plain" and part.defects == ("header_over_cap",)
    assert part.body(raw) == b"%PDF"  # the body still starts after the whole header block
    assert time.process_time() - started < 0.5
