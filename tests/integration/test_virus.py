"""The virus stage in the running stack: SMTP → Kafka → virus (real clamd) → route → Dovecot.

The ingress waits for the pipeline's verdict: an infected message is answered 554 at DATA with the
signature. These tests also follow what the pipeline did: a `rejected` or `quarantined` event (read
from ClickHouse, which the analytics sink fills from the Kafka topics) and what reached the maildir.
"""
from __future__ import annotations

import smtplib
import time
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest

from tests.integration.conftest import make_message, new_test_id, send
from tests.virus_samples import ZIP_MARKER, eicar, mail_with_attachment, nested_zips, zipped

RCPT = "max.mustermann@school.test"


def _terminal_rows(stack, test_id: str) -> list[list]:
    """(type, stage, reason, payload) of the rejected/quarantined events of the message with `test_id`."""
    return stack.sql("SELECT type, stage, reason, payload FROM poststelle.events "
                     f"WHERE type IN ('rejected', 'quarantined') AND payload LIKE '%{test_id}%'")


def _wait_terminal(stack, test_id: str, timeout: float = 60) -> tuple[str, str, str, dict]:
    rows = stack.wait_for(lambda: _terminal_rows(stack, test_id), timeout=timeout, interval=0.5,
                          what=f"a rejected/quarantined event for {test_id}")
    assert len(rows) == 1, rows
    kind, stage, reason, payload = rows[0]
    return kind, stage, reason, orjson.loads(payload)


def _refused_at_data(msg: bytes) -> bytes:
    """Send `msg`; the ingress must answer DATA with 554 5.7.1 (the pipeline's verdict). Returns the text."""
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(msg, [RCPT])
    assert refused.value.smtp_code == 554
    assert refused.value.smtp_error.startswith(b"5.7.1 Message refused by virus check: virus found: ")
    return refused.value.smtp_error


def _virus_details(event: dict) -> dict:
    (result,) = [r for r in event["results"] if r["stage"] == "virus"]
    return result["details"]


def _delivered(stack, test_id: str) -> int:
    return stack.test_ids(RCPT)[test_id]


def _send_clean_marker(stack) -> str:
    """A clean message sent after the others; once it is in the maildir the pipeline has moved past them."""
    test_id = new_test_id()
    send(make_message(test_id, subject=f"clean {test_id}"), [RCPT])
    stack.wait_for(lambda: _delivered(stack, test_id), timeout=60, what="the clean message in the maildir")
    return test_id


def test_eicar_attachment_is_rejected_and_not_delivered(stack):
    test_id = new_test_id()
    text = _refused_at_data(mail_with_attachment("eicar.com", eicar(), test_id=test_id, subject=f"eicar {test_id}"))
    assert text.endswith(b"Poststelle.Test.Eicar.UNOFFICIAL")  # the sending MTA learns the signature
    kind, stage, reason, event = _wait_terminal(stack, test_id)
    assert (kind, stage) == ("rejected", "virus")
    assert reason == "virus found: Poststelle.Test.Eicar.UNOFFICIAL"
    details = _virus_details(event)
    assert details["result"] == "infected" and details["signature"] == "Poststelle.Test.Eicar.UNOFFICIAL"
    assert details["scanner"] == f"clamd 127.0.0.1:{stack.env['POSTSTELLE_LOCAL__CLAMD_PORT']}"
    assert event["recipients"] == [RCPT]
    _send_clean_marker(stack)
    assert _delivered(stack, test_id) == 0


def test_project_signature_inside_a_zip_is_rejected(stack):
    test_id = new_test_id()
    archive = zipped({"protokoll/notes.txt": b"Sitzung\n" + ZIP_MARKER + b"\n"})
    text = _refused_at_data(mail_with_attachment("protokoll.zip", archive, test_id=test_id, subject=f"zip {test_id}",
                                                 content_type="application/zip"))
    assert b"Poststelle.Test.ZipMarker" in text
    kind, stage, reason, event = _wait_terminal(stack, test_id)
    assert (kind, stage) == ("rejected", "virus")
    assert "Poststelle.Test.ZipMarker" in reason
    assert _virus_details(event)["signature"] == "Poststelle.Test.ZipMarker.UNOFFICIAL"
    _send_clean_marker(stack)
    assert _delivered(stack, test_id) == 0


def test_scan_limit_is_quarantined(stack):
    test_id = new_test_id()
    send(mail_with_attachment("deep.zip", nested_zips(20), test_id=test_id, subject=f"deep {test_id}",
                              content_type="application/zip"), [RCPT])
    kind, stage, reason, event = _wait_terminal(stack, test_id)
    assert (kind, stage) == ("quarantined", "virus")
    assert "Heuristics.Limits.Exceeded.MaxRecursion" in reason
    assert _virus_details(event)["result"] == "limit_exceeded"
    _send_clean_marker(stack)
    assert _delivered(stack, test_id) == 0


def test_clean_attachment_is_delivered_with_the_scan_recorded(stack):
    test_id = new_test_id()
    sent = mail_with_attachment("bericht.pdf", b"%PDF-1.4\n" + b"1" * 30_000, test_id=test_id,
                                subject=f"pdf {test_id}")
    send(sent, [RCPT])
    stack.wait_for(lambda: _delivered(stack, test_id), timeout=60, what="the clean attachment in the maildir")

    def virus_result():
        rows = stack.sql("SELECT verdict, payload FROM poststelle.events WHERE type = 'stage_result' "
                         f"AND stage = 'virus' AND payload LIKE '%{test_id}%'")
        return rows or None

    ((verdict, payload),) = stack.wait_for(virus_result, what="the virus stage_result row")
    assert verdict == "pass"
    assert orjson.loads(payload)["result"]["details"]["result"] == "clean"


def test_clamd_down_holds_mail_until_it_is_back_and_loses_nothing(stack):
    def scanner_up() -> float | None:
        return stack.scrape(stack.component_of("virus")).get(("poststelle_scanner_up", (("stage", "virus"),)))

    clean_ids = [new_test_id() for _ in range(3)]
    infected_id = new_test_id()
    stack.hold("clamd")
    try:
        messages = [make_message(test_id, subject=f"while down {test_id}") for test_id in clean_ids]
        messages.append(mail_with_attachment("eicar.com", eicar(), test_id=infected_id, subject=f"down {infected_id}"))
        with ThreadPoolExecutor(len(messages)) as pool:  # each waits out the verdict wait: at once, not in turn
            assert list(pool.map(lambda msg: send(msg, [RCPT]), messages)) == [{}] * len(messages)
        stack.wait_for(lambda: scanner_up() == 0, timeout=30, what="the scanner-down metric")
        time.sleep(4)  # several retries (backoff max 2 s in the test stack)
        assert all(_delivered(stack, t) == 0 for t in clean_ids), "delivered unscanned while clamd was down"
        assert not _terminal_rows(stack, infected_id)
        log = stack.log_of("virus").read_text()
        assert "virus scanner DOWN" in log
        assert stack.status()["components"][stack.component_of("virus")]["state"] == "ready"  # waiting, not crashed
    finally:
        stack.release("clamd")

    for test_id in clean_ids:
        stack.wait_for(lambda t=test_id: _delivered(stack, t), timeout=60, what=f"{test_id} delivered after clamd")
    # the sender was told 250 after the verdict wait ran out: the rejection becomes quarantine
    rows = stack.wait_for(lambda: (r := _terminal_rows(stack, infected_id)) and len(r) == 2 and r, timeout=60,
                          what="the rejection and the quarantine of the late verdict")
    assert sorted((kind, stage, reason) for kind, stage, reason, _ in rows) == [
        ("quarantined", "virus", "late rejection: virus found: Poststelle.Test.Eicar.UNOFFICIAL"),
        ("rejected", "virus", "virus found: Poststelle.Test.Eicar.UNOFFICIAL")]
    assert all(_delivered(stack, t) == 1 for t in clean_ids)
    assert _delivered(stack, infected_id) == 0
    stack.wait_for(lambda: scanner_up() == 1, timeout=10, what="the scanner-up metric")
