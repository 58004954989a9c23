"""DSNs (RFC 3464): what the report says, when none may be sent, and the bounce service's event.

Every DSN here is parsed back with Python's `email` package (policy.default), the way a receiving
mail client or a test of the whole pipeline would read it.
"""
from __future__ import annotations

import email
import email.policy
import email.utils
import uuid

import pytest

from pipeline.mail.dsn import build_dsn, dsn_message_id, dsn_refusal, dsn_status
from schemas.events import (
    BlobRef,
    Bounced,
    Client,
    Deferred,
    Envelope,
    Received,
    Reply,
    Result,
    Routed,
    Verdict,
    decode_event,
    encode_event,
)
from schemas.ids import id_time_ms, new_id

ORIGINAL = (
    b"Received: from mail.ext.test (unknown [192.0.2.7])\r\n"
    b"\tby mx.school.test (poststelle) with ESMTP id 0190;\r\n"
    b"\tMon, 01 Jan 2024 10:00:00 +0000\r\n"
    b"From: Alice <alice@ext.test>\r\n"
    b"To: bob@school.test\r\n"
    b"Subject: Klassenfahrt nach Berlin\r\n"
    b"Message-ID: <trip@ext.test>\r\n"
    b"Date: Mon, 01 Jan 2024 10:59:58 +0100\r\n"
    b"\r\n"
    b"Der geheime Treffpunkt ist am Bahnhof.\r\n"
)
BODY_TEXT = b"geheime Treffpunkt"
RECEIVED_TIME = "2024-01-01T10:00:00.000Z"
BOUNCED_TIME = "2024-01-01T10:00:05.000Z"
MTA = "mx.school.test"
POSTMASTER = "postmaster@school.test"


def _received(original: bytes = ORIGINAL, mail_from: str = "alice@ext.test", blob: BlobRef | None = None) -> Received:
    return Received(
        message_id=new_id(),
        time=RECEIVED_TIME,
        envelope=Envelope(mail_from=mail_from, rcpt_to=["bob@school.test"]),
        client=Client(ip="192.0.2.7", port=40000, helo="mail.ext.test"),
        blob=blob or BlobRef(sha256="0" * 64, size=len(original)),
    )


def _bounced(*, reply: Reply | None = None, reason: str = "permanent", mail_from: str = "alice@ext.test",
             results: list[Result] | None = None, with_routed: bool = True, recipient: str = "bob@school.test",
             time: str = BOUNCED_TIME, message: Received | None = None) -> Bounced:
    message = message or _received(mail_from=mail_from)
    routed = Routed(message_id=message.message_id, destination="lmtp", recipients=[recipient],
                    message=message, results=results or [])
    return Bounced(
        message_id=message.message_id,
        time=time,
        destination="lmtp",
        recipient=recipient,
        attempt=1,
        reply=reply or Reply(code=550, enhanced="5.1.1", text="<bob@school.test>: User unknown"),
        reason=reason,  # type: ignore[arg-type]
        mail_from=mail_from,
        routed=routed if with_routed else None,
    )


def _build(bounced: Bounced, original: bytes = ORIGINAL) -> bytes:
    return build_dsn(bounced, original, reporting_mta=MTA, postmaster=POSTMASTER)


def _parse(dsn: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(dsn, policy=email.policy.default)


def _status_blocks(dsn: bytes) -> tuple[email.message.Message, email.message.Message]:
    """The per-message and the (only) per-recipient block of the delivery-status part."""
    status = [p for p in _parse(dsn).iter_parts() if p.get_content_type() == "message/delivery-status"]
    assert len(status) == 1
    blocks = status[0].get_payload()
    assert len(blocks) == 2
    return blocks[0], blocks[1]


def _human_text(dsn: bytes) -> str:
    """The explanation part, with its line wrapping undone."""
    return " ".join(next(_parse(dsn).iter_parts()).get_content().split())


# ---- structure --------------------------------------------------------------------------------------


def test_dsn_is_a_multipart_report_of_three_parts():
    msg = _parse(_build(_bounced()))
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert not msg.defects
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"]
    assert all(not p.defects for p in parts)


def test_dsn_uses_crlf_line_endings_only():
    dsn = _build(_bounced())
    assert b"\n" in dsn
    assert dsn.count(b"\n") == dsn.count(b"\r\n")


def test_dsn_headers_are_those_of_an_automatic_reply_to_the_sender():
    bounced = _bounced()
    msg = _parse(_build(bounced))
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg["MIME-Version"] == "1.0"
    (name, address), = email.utils.getaddresses([msg["From"]])
    assert (name, address) == ("Mail Delivery System", POSTMASTER)
    assert [a for _, a in email.utils.getaddresses([msg["To"]])] == ["alice@ext.test"]
    assert msg["Message-ID"] == f"<{dsn_message_id(bounced)}@{MTA}>"
    assert email.utils.parsedate_to_datetime(msg["Date"]).isoformat() == "2024-01-01T10:00:05+00:00"


def test_postmaster_without_domain_gets_the_reporting_mta():
    dsn = build_dsn(_bounced(), ORIGINAL, reporting_mta=MTA, postmaster="postmaster")
    assert email.utils.parseaddr(_parse(dsn)["From"])[1] == f"postmaster@{MTA}"


def test_same_bounced_event_gives_the_same_bytes():
    bounced = _bounced()
    again = decode_event(encode_event(bounced))
    assert _build(bounced) == _build(again)


# ---- delivery-status fields -------------------------------------------------------------------------


def test_permanent_failure_status_fields():
    per_message, per_rcpt = _status_blocks(_build(_bounced()))
    assert per_message["Reporting-MTA"] == f"dns; {MTA}"
    arrival = email.utils.parsedate_to_datetime(per_message["Arrival-Date"])
    assert arrival.isoformat() == "2024-01-01T10:00:00+00:00"
    assert per_rcpt["Final-Recipient"] == "rfc822; bob@school.test"
    assert per_rcpt["Action"] == "failed"
    assert per_rcpt["Status"] == "5.1.1"
    assert per_rcpt["Diagnostic-Code"] == "smtp; 550 5.1.1 <bob@school.test>: User unknown"
    last = email.utils.parsedate_to_datetime(per_rcpt["Last-Attempt-Date"])
    assert last.isoformat() == "2024-01-01T10:00:05+00:00"
    assert per_rcpt["Remote-MTA"] is None  # not known to the sink, not invented


def test_remote_mta_when_known():
    dsn = build_dsn(_bounced(), ORIGINAL, reporting_mta=MTA, postmaster=POSTMASTER, remote_mta="mx.ext.test")
    assert _status_blocks(dsn)[1]["Remote-MTA"] == "dns; mx.ext.test"


def test_long_diagnostic_is_folded_and_unfolds_to_the_reply():
    text = "mailbox unavailable " * 12
    dsn = _build(_bounced(reply=Reply(code=550, enhanced="5.2.1", text=text)))
    assert all(len(line) <= 998 for line in dsn.split(b"\r\n"))
    diagnostic = _status_blocks(dsn)[1]["Diagnostic-Code"]
    assert " ".join(diagnostic.split()) == "smtp; 550 5.2.1 " + " ".join(text.split())


def test_reply_text_cannot_inject_fields():
    reply = Reply(code=550, enhanced="5.1.1", text="no such user\r\nAction: delivered\r\n\r\nX: y")
    _, per_rcpt = _status_blocks(_build(_bounced(reply=reply)))
    assert per_rcpt.get_all("Action") == ["failed"]
    assert "no such user Action: delivered X: y" in per_rcpt["Diagnostic-Code"]


@pytest.mark.parametrize(
    "reply, reason, status",
    [
        (Reply(code=550, enhanced="5.1.1"), "permanent", "5.1.1"),
        (Reply(code=552, enhanced="5.2.2"), "permanent", "5.2.2"),
        (Reply(code=550), "permanent", "5.0.0"),
        (Reply(code=554, enhanced="4.2.0"), "permanent", "5.0.0"),  # class must match the code
        (Reply(code=550, enhanced="5.1"), "permanent", "5.0.0"),  # malformed
        (Reply(code=451, enhanced="4.4.1"), "expired", "4.4.7"),
        (Reply(code=550, enhanced="5.1.1"), "expired", "4.4.7"),
    ],
)
def test_status_code(reply, reason, status):
    assert dsn_status(_bounced(reply=reply, reason=reason)) == status


def test_expiry_reports_4_4_7_and_says_it_expired():
    bounced = _bounced(reason="expired", reply=Reply(code=451, enhanced="4.4.1", text="next hop not reachable"),
                       time="2024-01-08T10:00:05.000Z")
    dsn = _build(bounced)
    _, per_rcpt = _status_blocks(dsn)
    assert per_rcpt["Action"] == "failed"
    assert per_rcpt["Status"] == "4.4.7"
    assert per_rcpt["Diagnostic-Code"] == "smtp; 451 4.4.1 next hop not reachable"
    text = _human_text(dsn)
    assert "expired" in text
    assert "7 days" in text
    assert "451 4.4.1 next hop not reachable" in text


def test_permanent_human_text_names_recipient_and_reply():
    text = _human_text(_build(_bounced()))
    assert "<bob@school.test>" in text
    assert "550 5.1.1 <bob@school.test>: User unknown" in text
    assert "permanently" in text
    assert "expired" not in text


# ---- the returned headers ---------------------------------------------------------------------------


def test_third_part_has_the_original_headers_but_not_the_body():
    dsn = _build(_bounced())
    headers = list(_parse(dsn).iter_parts())[2].get_content()
    assert "Subject: Klassenfahrt nach Berlin" in headers
    assert "Message-ID: <trip@ext.test>" in headers
    assert BODY_TEXT.decode() not in headers
    assert BODY_TEXT not in dsn


def test_without_the_original_there_is_no_headers_part():
    dsn = _build(_bounced(), b"")
    parts = list(_parse(dsn).iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/delivery-status"]
    assert "attached" not in _human_text(dsn)


def test_eight_bit_headers_are_returned_quoted_printable():
    original = "Subject: Prüfung verschoben\r\nFrom: alice@ext.test\r\n\r\nText\r\n".encode()
    dsn = _build(_bounced(), original)
    assert dsn.isascii()
    part = list(_parse(dsn).iter_parts())[2]
    assert part["Content-Transfer-Encoding"] == "quoted-printable"
    assert "Subject: Prüfung verschoben" in part.get_payload(decode=True).decode("utf-8")


def test_utf8_recipient_is_escaped_in_the_status_and_plain_in_the_text():
    dsn = _build(_bounced(recipient="jürgen@school.test"))
    _, per_rcpt = _status_blocks(dsn)
    assert per_rcpt["Final-Recipient"] == "utf-8; j\\x{FC}rgen@school.test"
    assert "<jürgen@school.test>" in _human_text(dsn)


# ---- refusals ---------------------------------------------------------------------------------------


def test_clean_bounce_may_get_a_dsn():
    assert dsn_refusal(_bounced(), ORIGINAL) is None


@pytest.mark.parametrize("sender", ["", "<>"])
def test_no_dsn_to_the_null_sender(sender):
    assert dsn_refusal(_bounced(mail_from=sender), ORIGINAL) == "null sender"
    assert dsn_refusal(_bounced(mail_from=sender, with_routed=False), b"") == "null sender"


def test_no_dsn_without_message_data():
    assert dsn_refusal(_bounced(with_routed=False), b"") == "no message data"


@pytest.mark.parametrize("stage", ["spam", "virus"])
def test_no_dsn_after_a_spam_or_virus_verdict(stage):
    results = [Result(stage="route", verdict=Verdict.PASS), Result(stage=stage, verdict=Verdict.FAIL)]
    assert dsn_refusal(_bounced(results=results), ORIGINAL) == "spam/virus verdict"


@pytest.mark.parametrize(
    "result",
    [Result(stage="spam", verdict=Verdict.PASS), Result(stage="virus", verdict=Verdict.SKIP),
     Result(stage="attachment", verdict=Verdict.FAIL)],
)
def test_other_verdicts_do_not_stop_a_dsn(result):
    assert dsn_refusal(_bounced(results=[result]), ORIGINAL) is None


def test_no_dsn_for_a_bounce():
    a_dsn = _build(_bounced())
    assert dsn_refusal(_bounced(), a_dsn) == "bounce of a bounce"


def test_report_type_is_matched_case_insensitively():
    original = (b"From: x@ext.test\r\nContent-Type: Multipart/Report; Report-Type=\"Delivery-Status\";"
                b" boundary=b\r\n\r\n--b--\r\n")
    assert dsn_refusal(_bounced(), original) == "bounce of a bounce"


def test_other_reports_are_not_bounces():
    original = (b"From: x@ext.test\r\nContent-Type: multipart/report; report-type=disposition-notification;"
                b" boundary=b\r\n\r\n--b--\r\n")
    assert dsn_refusal(_bounced(), original) is None


# ---- message id -------------------------------------------------------------------------------------


def test_dsn_message_id_is_deterministic_per_bounced_event():
    bounced = _bounced()
    assert dsn_message_id(bounced) == dsn_message_id(decode_event(encode_event(bounced)))
    assert dsn_message_id(bounced) != dsn_message_id(_bounced())
    assert dsn_message_id(bounced) not in (bounced.id, bounced.message_id)


def test_dsn_message_id_is_shaped_like_the_other_ids():
    bounced = _bounced()
    value = uuid.UUID(dsn_message_id(bounced))
    assert value.version == 7
    assert str(value) == dsn_message_id(bounced)
    assert id_time_ms(str(value)) == id_time_ms(bounced.id)


# ---- the delay notice (a deferral past delivery.delay_warning) ---------------------------------------


DEFERRED_TIME = "2024-01-01T14:05:00.000Z"  # 4 h 5 min after RECEIVED_TIME
RETRY_UNTIL = "2024-01-08T10:00:00.000Z"


def _deferred(*, reply: Reply | None = None, mail_from: str = "alice@ext.test",
              results: list[Result] | None = None) -> Deferred:
    message = _received(mail_from=mail_from)
    routed = Routed(message_id=message.message_id, destination="lmtp", recipients=["bob@school.test"],
                    message=message, results=results or [], attempt=4)
    return Deferred(message_id=message.message_id, time=DEFERRED_TIME, destination="lmtp", recipient="bob@school.test",
                    attempt=5, reply=reply or Reply(code=452, enhanced="4.2.2", text="Mailbox is full"),
                    next_attempt_time="2024-01-01T18:05:00.000Z", routed=routed, delay_notice=True)


def _build_delay(deferred: Deferred) -> bytes:
    return build_dsn(deferred, ORIGINAL, reporting_mta=MTA, postmaster=POSTMASTER, retry_until=RETRY_UNTIL)


def test_a_delay_notice_says_delayed_and_until_when_it_is_retried():
    deferred = _deferred()
    dsn = _build_delay(deferred)
    msg = _parse(dsn)
    assert msg["Subject"] == "Delayed Mail (still being retried)"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert [a for _, a in email.utils.getaddresses([msg["To"]])] == ["alice@ext.test"]
    assert msg["Message-ID"] == f"<{dsn_message_id(deferred)}@{MTA}>"
    assert [p.get_content_type() for p in msg.iter_parts()] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"]
    per_message, per_recipient = _status_blocks(dsn)
    assert per_recipient["Action"] == "delayed"
    assert per_recipient["Status"] == "4.2.2"
    assert per_recipient["Diagnostic-Code"] == "smtp; 452 4.2.2 Mailbox is full"
    until, last = (email.utils.parsedate_to_datetime(per_recipient[f]).isoformat()
                   for f in ("Will-Retry-Until", "Last-Attempt-Date"))
    assert (until, last) == ("2024-01-08T10:00:00+00:00", "2024-01-01T14:05:00+00:00")
    text = _human_text(dsn)
    assert "has not yet been delivered to the following recipient: <bob@school.test>" in text
    assert "Delivery has been tried for 4 hours. It will be tried again until Mon, 08 Jan 2024 10:00:00" in text
    assert "you do not need to send it again" in text and "452 4.2.2 Mailbox is full" in text
    assert "could not be delivered" not in text and "will not be tried again" not in text
    assert BODY_TEXT not in dsn


def test_a_delay_notice_without_a_lifetime_leaves_out_when_and_a_reply_of_no_class_is_4_0_0():
    deferred = _deferred(reply=Reply(code=0, text="connection lost"))
    dsn = build_dsn(deferred, ORIGINAL, reporting_mta=MTA, postmaster=POSTMASTER)
    _, per_recipient = _status_blocks(dsn)
    assert per_recipient["Status"] == "4.0.0" and dsn_status(deferred) == "4.0.0"
    assert per_recipient["Will-Retry-Until"] is None
    assert "It will be tried again; you do not need" in _human_text(dsn)


def test_a_delay_notice_is_refused_as_a_failure_is():
    assert dsn_refusal(_deferred(), ORIGINAL) is None
    assert dsn_refusal(_deferred(mail_from=""), ORIGINAL) == "null sender"
    spam = Result(stage="spam", verdict=Verdict.FAIL)
    assert dsn_refusal(_deferred(results=[spam]), ORIGINAL) == "spam/virus verdict"


def test_a_delay_notice_and_the_failure_after_it_are_two_messages():
    deferred = _deferred()
    bounced = _bounced(message=deferred.routed.message, reason="expired")
    assert dsn_message_id(deferred) != dsn_message_id(bounced)
    assert dsn_message_id(decode_event(encode_event(deferred))) == dsn_message_id(deferred)
