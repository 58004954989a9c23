"""Outbound mail against the real stack with MX delivery: DNS lookup in NSD, smtp-sink as the test MX
hosts, DKIM signatures that verify against the key NSD publishes, null MX bouncing with a DSN.

The module runs its own stack (the session stack sends outside mail to the smarthost): the route
stage's remote destination is `mx`, so anna's mail to an outside domain goes to the MX sink, which
looks the domain up in NSD (deploy/local/dns/test.zone) and delivers to the test MX hosts that
`local.mx_hosts` starts (smtp-sink on 127.0.3.25 and 127.0.3.26, each dumping into <home>/mx/<address>/):

    outside.test  MX 10 mx1.outside.test (127.0.3.24, nothing listens), MX 20 mx2.outside.test (127.0.3.25)
    aonly.test    no MX, A 127.0.3.26 (the implicit MX)
    nullmx.test   MX 0 . (accepts no mail, RFC 7505)
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import dkim
import pytest

from pipeline.clients.dns import Resolver
from pipeline.localstack.smarthost import mx_host_dump_dir
from tests.integration.conftest import REPO, SESSION_BASE, launch, new_test_id, read_all, stop
from tests.integration.test_expand import ANNA, _dsns_mentioning
from tests.integration.test_smtp_defences import submission
from tests.integration.test_verdict import queued_id

BASE = SESSION_BASE + 200
MX_ENV = {
    "POSTSTELLE_STAGES__ROUTE__REMOTE_DESTINATION": "mx",
    "POSTSTELLE_SUPERVISOR__SINKS": "lmtp,smarthost,mx",  # no analytics: these tests read Kafka and the dumps
}


@pytest.fixture(scope="module")
def mx_stack():
    stack = launch(REPO / "var" / f"test-stack-{BASE}", BASE, MX_ENV)
    yield stack
    stop(stack)


def _submit(stack, to: str, test_id: str) -> str:
    """anna submits (AUTH) one message to `to`; its message id."""
    msg = (f"From: Anna Schmidt <{ANNA}>\r\nTo: <{to}>\r\nSubject: Schulfest\r\nX-Test-Id: {test_id}\r\n"
           f"Message-ID: <{test_id}@school.test>\r\n\r\nHallo,\r\nwir laden ein.\r\n").encode()
    with submission(stack) as client:
        client.login("anna.schmidt", "Anna2026!")
        code, reply = client.mail(ANNA)
        assert code == 250, reply
        code, reply = client.rcpt(to)
        assert code == 250, reply
        code, reply = client.data(msg)
    assert code == 250, reply
    return queued_id(reply)


def _dumps(dump_dir: Path, test_id: str) -> list[bytes]:
    if not dump_dir.is_dir():
        return []
    found = [p.read_bytes() for p in sorted(dump_dir.iterdir()) if p.is_file()]
    return [d for d in found if test_id.encode() in d and d.endswith(b"\n\n")]  # written completely


def _sent_message(dump: bytes) -> bytes:
    """The message as the MX sink sent it: smtp-sink's own fields cut off (ours starts with the
    signature), LF endings back to CRLF."""
    start = dump.index(b"DKIM-Signature:")
    return dump[start:].replace(b"\n", b"\r\n")


def _verifies(stack, message: bytes) -> bool:
    """dkimpy's verdict, the key fetched from the stack's NSD by the resolver the pipeline uses."""
    resolver = Resolver("127.0.0.1", int(stack.env["POSTSTELLE_DNS__PORT"]), timeout=3.0)
    record = asyncio.run(resolver.txt("s2026._domainkey.school.test"))
    assert record.ok, record.describe()
    return dkim.verify(message, dnsfunc=lambda name, timeout=5: record.records[0].encode())


def _delivery_events(stack, message_id: str) -> list:
    return read_all(stack, "poststelle.delivery", lambda e: getattr(e, "message_id", "") == message_id)


def test_outside_mail_reaches_the_mx_found_by_the_lookup_dkim_signed(mx_stack):
    test_id = new_test_id()
    message_id = _submit(mx_stack, "freundin@outside.test", test_id)
    dump_dir = mx_host_dump_dir(mx_stack.home, "127.0.3.25")  # mx2: mx1 (preference 10) refuses connections
    [dump] = mx_stack.wait_for(lambda: _dumps(dump_dir, test_id), timeout=60, what="the mail at mx2.outside.test")
    head = dump[:dump.index(b"DKIM-Signature:")].decode()
    assert f"X-Mail-Args: <{ANNA}>" in head and "X-Rcpt-Args: <freundin@outside.test>" in head
    sent = _sent_message(dump)
    assert b"c=relaxed/relaxed" in sent.replace(b"\r\n ", b" ") and b"d=school.test" in sent
    assert _verifies(mx_stack, sent)
    assert not _verifies(mx_stack, sent.replace(b"wir laden ein.", b"wir laden aus."))

    def delivered():
        return [e for e in _delivery_events(mx_stack, message_id) if type(e).__name__ == "Delivered"]

    [event] = mx_stack.wait_for(delivered, timeout=30, what="the delivered event")
    assert event.destination == "mx" and event.recipient == "freundin@outside.test" and event.reply.code == 250


def test_a_domain_without_mx_gets_its_mail_at_its_a_record(mx_stack):
    test_id = new_test_id()
    _submit(mx_stack, "jemand@aonly.test", test_id)
    dump_dir = mx_host_dump_dir(mx_stack.home, "127.0.3.26")
    [dump] = mx_stack.wait_for(lambda: _dumps(dump_dir, test_id), timeout=60, what="the mail at aonly.test's A")
    assert b"X-Rcpt-Args: <jemand@aonly.test>" in dump
    assert _verifies(mx_stack, _sent_message(dump))
    assert not _dumps(mx_host_dump_dir(mx_stack.home, "127.0.3.25"), test_id)


def test_a_null_mx_domain_bounces_with_a_dsn_to_the_sender(mx_stack):
    test_id = new_test_id()
    message_id = _submit(mx_stack, "niemand@nullmx.test", test_id)

    def bounced():
        return [e for e in _delivery_events(mx_stack, message_id) if type(e).__name__ == "Bounced"]

    [event] = mx_stack.wait_for(bounced, timeout=60, what="the bounced event")
    assert (event.reply.code, event.reply.enhanced, event.attempt) == (556, "5.1.10", 1)  # no retries
    [dsn] = mx_stack.wait_for(lambda: _dsns_mentioning(mx_stack, ANNA, test_id), timeout=60, what="anna's DSN")
    assert "niemand@nullmx.test" in dsn.as_string() and "5.1.10" in dsn.as_string()
