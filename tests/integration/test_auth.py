"""The auth stage in the real stack: DKIM keys and SPF/DMARC records in NSD, delivery through Dovecot.

Messages are DKIM-signed here with the TEST-ONLY keys of deploy/local/dns/keys/. 127.0.0.1 is
allow-listed for the SMTP-time checks but not for the auth stage, whose SPF sees it as an address no
test domain lists; 127.0.2.20 (mx.ext.test, forward-confirmed) plays an unlisted remote MTA and has
to get past greylisting first.
"""
from __future__ import annotations

import smtplib
import time
from email.parser import BytesHeaderParser

import pytest

from tests.consumers.stages.authn.fixtures import sign
from tests.integration.conftest import SMTP_HOST, new_test_id

pytestmark = pytest.mark.integration

TO = "max.mustermann@school.test"
UNLISTED_MTA = "127.0.2.20"  # mx.ext.test: forward-confirmed, in no SPF record of good.test
GREYLIST_DELAY = 2.0  # POSTSTELLE_CHECKS__GREYLIST__DELAY in the test stack


def message(test_id: str, from_addr: str, extra: str = "") -> bytes:
    return (f"From: {from_addr}\r\nTo: {TO}\r\nSubject: auth {test_id[:8]}\r\nX-Test-Id: {test_id}\r\n"
            f"Message-ID: <{test_id}@auth.test>\r\n{extra}\r\nHallo,\r\nbis morgen.\r\n").encode()


def send_from(stack, ip: str, mail_from: str, raw: bytes, tries: int = 3) -> None:
    """Send from client address `ip`, retrying after the greylisting delay like a real MTA."""
    for attempt in range(tries):
        try:
            with smtplib.SMTP(SMTP_HOST, stack.smtp_port, source_address=(ip, 0), timeout=30) as client:
                client.ehlo("mx.ext.test")
                assert client.sendmail(mail_from, [TO], raw) == {}
                return
        except smtplib.SMTPRecipientsRefused as refused:
            code, _ = refused.recipients[TO]
            if code != 451 or attempt == tries - 1:
                raise
            time.sleep(GREYLIST_DELAY + 0.5)


def delivered(stack, test_id: str) -> bytes:
    stack.wait_for(lambda: stack.test_ids(TO)[test_id], timeout=60, what=f"delivery of {test_id}")
    return next(raw for raw in stack.messages(TO) if test_id.encode() in raw)


def our_results(raw: bytes) -> list[str]:
    values = BytesHeaderParser().parsebytes(raw).get_all("Authentication-Results") or []
    return [" ".join(str(v).split()) for v in values if str(v).strip().lower().startswith("mx.school.test")]


def test_a_signed_message_gets_dkim_pass_and_forged_results_are_removed(stack):
    test_id = new_test_id()
    forged = "Authentication-Results: mx.school.test; dkim=pass header.d=bank.test; dmarc=pass\r\n"
    raw = sign(message(test_id, f"Lehrer <lehrer-{test_id[:8]}@good.test>", extra=forged))
    send_from(stack, "127.0.0.1", f"lehrer-{test_id[:8]}@good.test", raw)
    (header,) = our_results(delivered(stack, test_id))
    assert "dkim=pass header.d=good.test header.s=sel" in header
    assert "spf=fail smtp.mailfrom=good.test" in header  # 127.0.0.1 is not in good.test's SPF
    assert "dmarc=pass (p=reject dis=none) header.from=good.test" in header
    assert "bank.test" not in header


def test_a_tampered_body_gets_dkim_fail(stack):
    test_id = new_test_id()
    signed = sign(message(test_id, f"info-{test_id[:8]}@signed.test"), domain="signed.test")
    tampered = signed.replace(b"bis morgen.", b"bis heute.")
    send_from(stack, "127.0.0.1", f"info-{test_id[:8]}@signed.test", tampered)
    (header,) = our_results(delivered(stack, test_id))
    assert "dkim=fail" in header and "header.d=signed.test" in header
    assert "dmarc=none header.from=signed.test" in header  # signed.test publishes no DMARC policy


def test_an_unlisted_client_gets_spf_fail(stack):
    test_id = new_test_id()
    send_from(stack, UNLISTED_MTA, f"news-{test_id[:8]}@good.test", message(test_id, "news@signed.test"))
    (header,) = our_results(delivered(stack, test_id))
    assert "spf=fail smtp.mailfrom=good.test" in header


def test_a_dmarc_reject_domain_failing_alignment_is_rejected_and_not_delivered(stack):
    test_id = new_test_id()
    sender = f"chef-{test_id[:8]}@good.test"
    with pytest.raises(smtplib.SMTPDataError) as refused:  # unsigned, SPF fail: nothing aligns
        send_from(stack, "127.0.0.1", sender, message(test_id, sender))
    assert refused.value.smtp_code == 554  # the SMTP-time verdict: the sending MTA owns the bounce
    assert refused.value.smtp_error.startswith(b"5.7.1 Message refused by auth check: DMARC policy of good.test")
    (row,) = stack.wait_for(
        lambda: stack.sql("SELECT stage, reason, recipients FROM poststelle.events "
                          f"WHERE type = 'rejected' AND sender = '{sender}'"),
        timeout=60, what="the rejected event in the analytics")
    assert row[0] == "auth" and row[2] == [TO]
    assert row[1].startswith("DMARC policy of good.test is reject: neither SPF (fail for good.test) nor DKIM")
    verdicts = stack.sql("SELECT stage, verdict FROM poststelle.events "
                         f"WHERE type = 'stage_result' AND sender = '{sender}'")
    assert ["auth", "pass"] not in verdicts
    time.sleep(2.0)  # the pipeline is done with it: nothing may show up in the mailbox
    assert stack.test_ids(TO)[test_id] == 0
