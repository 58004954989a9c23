"""The attachment stage against the real stack: held parts, notices, the quarantine CLI, MIME caps."""
from __future__ import annotations

import base64
import email
import email.policy
import email.utils
import io
import re
import smtplib
import zipfile

import orjson
import pytest

from pipeline.mail.mime import walk
from tests.integration.conftest import SMTP_HOST, new_test_id, strip_trace
from tests.pipeline.mail.test_mime import many_parts, nested_message

RCPT = "max.mustermann@school.test"
PROGRAM = b"MZ\x90\x00\x03\x00\x00\x00 pretend this is a program " * 20


def send_queued(stack, msg: bytes, to: str = RCPT) -> str:
    """Send `msg`; the poststelle message id from the 250 reply."""
    with smtplib.SMTP(SMTP_HOST, stack.smtp_port, timeout=30) as client:
        client.ehlo()
        client.mail("sender@example.org")
        client.rcpt(to)
        code, reply = client.data(msg)
    assert code == 250, reply
    return re.search(rb"queued as (\S+)", reply).group(1).decode()


def _b64(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def message(test_id: str, attachment_headers: bytes, payload: bytes) -> bytes:
    """A mail as a real sender's program writes it (Date, a display name), so the spam stage leaves its
    subject alone: what this module tests is the attachment stage."""
    return (
        f"From: Buchhaltung <sender@example.org>\r\nTo: {RCPT}\r\nSubject: Rechnung {test_id[:6]}\r\n"
        f"Date: {email.utils.formatdate()}\r\nX-Test-Id: {test_id}\r\n"
        f"Message-ID: <{test_id}@example.org>\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/mixed; boundary="=_b{test_id}"\r\n\r\n'
        f"--=_b{test_id}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHallo Max,\r\nanbei die Rechnung.\r\n"
        f"--=_b{test_id}\r\n").encode() + attachment_headers + b"Content-Transfer-Encoding: base64\r\n\r\n" + _b64(
        payload) + f"--=_b{test_id}--\r\n".encode()


def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _delivered(stack, test_id: str) -> bytes:
    def find():
        for raw in stack.messages(RCPT):
            if f"X-Test-Id: {test_id}".encode() in raw:
                return raw
        return None
    return stack.wait_for(find, timeout=60, what=f"delivery of {test_id}")


def _notice(stack, test_id: str, message_id: str) -> email.message.EmailMessage:
    def find():
        for raw in stack.messages(RCPT):
            mail = email.message_from_bytes(raw, policy=email.policy.default)
            if mail.get("In-Reply-To") == f"<{test_id}@example.org>" and mail.get("X-Poststelle-Held") == message_id:
                return mail
        return None
    return stack.wait_for(find, timeout=60, what=f"the notice about {message_id}")


CASES = {
    "space_run": (b'Content-Type: application/octet-stream\r\n'
                  b'Content-Disposition: attachment; filename="Rechnung.pdf            .exe"\r\n', PROGRAM,
                  "space_run: 12 spaces"),
    "double_extension": (b'Content-Type: application/pdf; name="a.pdf.exe"\r\n'
                         b'Content-Disposition: attachment; filename="a.pdf.exe"\r\n', PROGRAM,
                         "double_extension: .pdf.exe"),
    "rfc2231": (b"Content-Type: application/octet-stream\r\n"
                b"Content-Disposition: attachment;\r\n filename*0*=utf-8''Zahlungsaufforderung%20M%C3%A4rz;\r\n"
                b" filename*1*=%2Eexe\r\n", PROGRAM, "blocked_extension: .exe"),
    "zip_js": (b'Content-Type: application/zip; name="rechnung.zip"\r\n'
               b'Content-Disposition: attachment; filename="rechnung.zip"\r\n',
               _zip({"rechnung.pdf": b"%PDF-1.4", "rechnung/invoice.js": b"WScript.Echo(1)"}),
               "zip entry 'rechnung/invoice.js': blocked_extension: .js"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_flagged_attachments_are_held_the_rest_delivered_and_the_recipient_told(stack, case, tmp_path):
    headers, payload, reason = CASES[case]
    test_id = new_test_id()
    sent = message(test_id, headers, payload)
    message_id = send_queued(stack, sent)

    delivered = _delivered(stack, test_id)
    parts = [p for p in walk(delivered) if p.is_leaf]
    assert [p.content_type for p in parts] == ["text/plain", "text/plain"]
    notice_text = parts[1].body(delivered).decode()
    assert "held in quarantine" in notice_text and message_id in notice_text and "part: 2" in notice_text
    assert reason in notice_text.replace("=\n", "").replace("=\r\n", "")
    assert _b64(payload)[:40] not in delivered
    _, rest = strip_trace(delivered)  # before and after the held part: the bytes that were sent
    assert rest.startswith(sent[:sent.index(headers)].replace(b"\r\n", b"\n"))
    assert rest.endswith(f"\n--=_b{test_id}--\n".encode())

    listing = orjson.loads(stack.cli("quarantine", "list", "--json").stdout)
    rows = [r for r in listing["rows"] if r[1] == message_id]
    assert [(r[2], r[3], r[4]) for r in rows] == [("held", "attachment", "2")]
    out = tmp_path / "held.bin"
    stack.cli("quarantine", "get", message_id, "2", "-o", str(out))
    assert out.read_bytes() == payload

    notice = _notice(stack, test_id, message_id)
    assert notice["Auto-Submitted"] == "auto-generated"
    assert message_id in notice.get_content() and "(part 2)" in notice.get_content()


def test_a_harmless_pdf_passes_byte_for_byte(stack):
    test_id = new_test_id()
    sent = message(test_id, b'Content-Type: application/pdf\r\n'
                            b'Content-Disposition: attachment; filename="Rechnung 2025-03.pdf"\r\n',
                   b"%PDF-1.4\n" + b"harmless content\n" * 200)
    message_id = send_queued(stack, sent)
    delivered = _delivered(stack, test_id)
    _, rest = strip_trace(delivered)
    assert rest == sent.replace(b"\r\n", b"\n")
    rows = stack.wait_for(lambda: stack.sql(
        f"SELECT verdict FROM poststelle.events WHERE type = 'stage_result' AND stage = 'attachment' "
        f"AND message_id = '{message_id}'"), timeout=30, what="the attachment stage result")
    assert rows == [["pass"]]


@pytest.mark.parametrize("shape, raw_of, reason", [
    ("200 levels deep", lambda: nested_message(200), "mime_too_deep: nested deeper than 20 levels"),
    ("10,000 parts", lambda: many_parts(10_000), "mime_too_many_parts: more than 1000 MIME parts"),
])
def test_mime_bombs_are_quarantined_with_the_reason(stack, shape, raw_of, reason):
    test_id = new_test_id()
    raw = f"X-Test-Id: {test_id}\r\nTo: {RCPT}\r\n".encode() + raw_of()
    message_id = send_queued(stack, raw)

    def quarantined():
        listing = orjson.loads(stack.cli("quarantine", "list", "--json").stdout)
        return [r for r in listing["rows"] if r[1] == message_id]

    (row,) = stack.wait_for(quarantined, timeout=60, what=f"the quarantine event of the {shape} message")
    assert row[2:4] == ["quarantined", "attachment"] and row[6] == reason
    assert not stack.test_ids(RCPT)[test_id]
