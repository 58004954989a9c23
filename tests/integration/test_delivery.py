"""Delivery semantics against the real stack: retries, expiry, DSNs, the smarthost."""
from __future__ import annotations

import asyncio
import datetime
import email
import email.policy
import email.utils
import signal
import smtplib
import subprocess
import time

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from pipeline.blobstore import FileBlobStore
from schemas.events import Client, Envelope, Received, Routed, encode_event
from schemas.ids import new_id
from tests.integration.conftest import FULL_BOX, NO_MAILBOX, make_message, new_test_id, send, send_data, write_users

BIG = "x" * 78 + "\r\n"


def _big_message(test_id: str, to: str) -> bytes:
    return make_message(test_id, to=to, subject="zu gross", body=BIG * 130)  # ~10 KiB: over a 1K quota


def _dsns(stack, mailbox: str) -> list[email.message.EmailMessage]:
    found = []
    for raw in stack.messages(mailbox):
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        if msg.get_content_type() == "multipart/report":
            found.append(msg)
    return found


def _status_fields(dsn: email.message.EmailMessage) -> dict[str, str]:
    """The per-recipient fields of the message/delivery-status part."""
    part = next(p for p in dsn.walk() if p.get_content_type() == "message/delivery-status")
    blocks = part.get_payload()
    fields = {}
    for block in blocks[1:]:
        for key, value in block.items():
            fields[key.lower()] = str(value)
    return fields


def _arrival_date(dsn: email.message.EmailMessage) -> str:
    """Arrival-Date of the per-message block: when the gateway accepted the message."""
    part = next(p for p in dsn.walk() if p.get_content_type() == "message/delivery-status")
    return str(part.get_payload()[0]["Arrival-Date"])


def _dsns_about(stack, mailbox: str, recipient: str) -> list[email.message.EmailMessage]:
    return [d for d in _dsns(stack, mailbox) if recipient in _status_fields(d).get("final-recipient", "")]


def test_over_quota_is_deferred_then_delivered_after_the_quota_is_raised(stack):
    test_id = new_test_id()
    try:
        send(_big_message(test_id, FULL_BOX), [FULL_BOX], port=stack.smtp_port)

        def queued():
            out = stack.cli("queue").stdout
            return out if FULL_BOX in out else None

        listing = stack.wait_for(queued, timeout=30, what="the deferred delivery in `poststelle queue`")
        assert "452" in listing and "4.2.2" in listing
        assert not stack.test_ids(FULL_BOX)[test_id]
        write_users(stack.home, quota="100M")
        stack.wait_for(lambda: stack.test_ids(FULL_BOX)[test_id], timeout=30, what="delivery after the quota rise")
    finally:
        write_users(stack.home, quota="1K")
    time.sleep(3)  # a stray extra retry would land now
    assert stack.test_ids(FULL_BOX)[test_id] == 1
    assert FULL_BOX not in stack.cli("queue").stdout


def test_unknown_mailbox_gives_exactly_one_dsn_and_the_null_sender_none(stack):
    sender = "lena.mueller@school.test"
    nobody_null, nobody = NO_MAILBOX  # known to the directory, so accepted; unknown to Dovecot
    send(make_message(new_test_id(), to=nobody_null), [nobody_null], mail_from="", port=stack.smtp_port)
    send(make_message(new_test_id(), to=nobody, subject="an niemanden"), [nobody], mail_from=sender,
         port=stack.smtp_port)

    dsn = stack.wait_for(lambda: _dsns_about(stack, sender, nobody), timeout=60, what="the DSN")[0]
    assert dsn.get_param("report-type") == "delivery-status"
    fields = _status_fields(dsn)
    assert fields["final-recipient"] == f"rfc822; {nobody}"
    assert fields["action"] == "failed"
    assert fields["status"] == "5.1.1"
    assert "550" in fields["diagnostic-code"]
    headers = next(p for p in dsn.walk() if p.get_content_type() == "text/rfc822-headers")
    assert "an niemanden" in headers.get_content()
    time.sleep(3)  # a second DSN would have arrived by now
    assert len(_dsns_about(stack, sender, nobody)) == 1
    # the null sender's bounce produced no DSN anywhere: no mailbox holds one about that recipient
    mailboxes = {p.parent.parent for p in (stack.home / "mail").glob("*/*/new/*")}
    for box in mailboxes:
        address = f"{box.name}@{box.parent.name}"
        assert not _dsns_about(stack, address, nobody_null), address


def test_a_delivery_past_the_delay_warning_tells_the_sender_once_and_after_the_lifetime_one_dsn(stack):
    """The test stack's delay warning is 10 s and its lifetime 20 s: a mailbox that stays full makes the
    sender hear once that the message is still being tried (Action: delayed), then that it expired."""
    sender = "anna.schmidt@school.test"
    send(_big_message(new_test_id(), FULL_BOX), [FULL_BOX], mail_from=sender, port=stack.smtp_port)

    def failed() -> list[email.message.EmailMessage]:
        return [d for d in _dsns_about(stack, sender, FULL_BOX) if _status_fields(d)["action"] == "failed"]

    (dsn,) = stack.wait_for(failed, timeout=60, interval=1, what="the expiry DSN")
    fields = _status_fields(dsn)
    assert fields["status"] == "4.4.7"
    assert "452" in fields["diagnostic-code"]
    time.sleep(3)
    dsns = _dsns_about(stack, sender, FULL_BOX)
    assert sorted(_status_fields(d)["action"] for d in dsns) == ["delayed", "failed"]
    (delayed,) = [d for d in dsns if _status_fields(d)["action"] == "delayed"]
    assert delayed["Subject"] == "Delayed Mail (still being retried)"
    fields = _status_fields(delayed)
    assert fields["status"] == "4.2.2" and "452" in fields["diagnostic-code"]
    arrival = email.utils.parsedate_to_datetime(_arrival_date(delayed))
    assert email.utils.parsedate_to_datetime(fields["will-retry-until"]) - arrival == datetime.timedelta(seconds=20)
    assert email.utils.parsedate_to_datetime(delayed["Date"]) < email.utils.parsedate_to_datetime(dsn["Date"])


def test_queue_delete_takes_a_deferred_delivery_out_for_good_without_a_dsn(stack):
    """`poststelle queue delete` (postsuper -d): retried every 1-2 s in the test stack, the delivery is
    not tried again once deleted, not even after the mailbox has room; the sender hears nothing."""
    sender = "anna.schmidt@school.test"
    test_id = new_test_id()
    try:
        reply = send_data(stack, _big_message(test_id, FULL_BOX), [FULL_BOX], mail_from=sender)
        assert reply.code == 250, reply
        stack.wait_for(lambda: reply.message_id in stack.cli("queue").stdout, timeout=30, what="the deferral")
        listed = stack.cli("queue", "--from", sender).stdout
        assert reply.message_id in listed and sender in listed
        assert stack.cli("queue", "list", reply.message_id, "--from", "nobody@ext.test").stdout.strip() == (
            "no deferred delivery matches")
        done = stack.cli("queue", "delete", reply.message_id, "--from", sender, "--by", "helpdesk: ticket 4711")
        assert done.stdout.strip() == "1 deferred deliveries deleted (no DSN to their senders)"
        assert reply.message_id not in stack.cli("queue").stdout
        write_users(stack.home, quota="100M")
        time.sleep(6)  # several retry rounds: a retry still in the queue would have delivered it by now
        assert stack.test_ids(FULL_BOX)[test_id] == 0
    finally:
        write_users(stack.home, quota="1K")
    rows = stack.wait_for(lambda: stack.sql(f"SELECT recipient, reason FROM poststelle.events WHERE type = 'discarded' "
                                            f"AND message_id = '{reply.message_id}'"), what="the discarded event")
    assert rows == [[FULL_BOX, "helpdesk: ticket 4711"]]
    assert not [d for d in _dsns(stack, sender) if reply.message_id in d.as_string()]
    assert stack.cli("queue", "delete", reply.message_id).stdout.strip().startswith("0 deferred")


def test_killing_the_retry_service_while_deliveries_are_deferred_loses_none(stack):
    ids = [new_test_id() for _ in range(3)]
    try:
        for test_id in ids:
            send(_big_message(test_id, FULL_BOX), [FULL_BOX], port=stack.smtp_port)
        stack.wait_for(lambda: stack.cli("queue").stdout.count(FULL_BOX) >= 3, timeout=30, what="3 deferred")
        pid = stack.kill("retry", signal.SIGKILL)
        stack.wait_restarted("retry", pid)
        pid = stack.kill("sink:lmtp", signal.SIGKILL)
        write_users(stack.home, quota="100M")
        stack.wait_restarted("sink:lmtp", pid)
        stack.wait_for(lambda: all(stack.test_ids(FULL_BOX)[i] for i in ids), timeout=60,
                       what="all deferred messages delivered")
    finally:
        write_users(stack.home, quota="1K")
    assert all(stack.test_ids(FULL_BOX)[i] == 1 for i in ids)


# ---- smarthost -----------------------------------------------------------------------------


def _route_to_smarthost(stack, mail_from: str, rcpt: str, test_id: str) -> str:
    """Put a message on the smarthost's topic as the route stage would (relay from the ingress
    needs authenticated submission, which a later issue adds)."""
    raw = make_message(test_id, to=rcpt, subject="nach draussen")
    ref = FileBlobStore(stack.home / "blobs").put(raw)
    message = Received(message_id=new_id(), envelope=Envelope(mail_from=mail_from, rcpt_to=[rcpt]),
                       client=Client(ip="127.0.0.1", port=0), blob=ref)
    routed = Routed(message_id=message.message_id, destination="smarthost", recipients=[rcpt], message=message)

    async def produce():
        producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait("poststelle.routed.smarthost", encode_event(routed),
                                         key=message.message_id.encode())
        finally:
            await producer.stop()

    asyncio.run(produce())
    return message.message_id


def _delivery_events(stack, message_id: str) -> list[dict]:
    async def read():
        consumer = AIOKafkaConsumer("poststelle.delivery", bootstrap_servers=stack.bootstrap,
                                    auto_offset_reset="earliest", isolation_level="read_committed")
        await consumer.start()
        found = []
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=1000)
                if not batch:
                    return found
                for records in batch.values():
                    found += [e for e in map(lambda r: orjson.loads(r.value), records)
                              if e.get("message_id") == message_id]
        finally:
            await consumer.stop()

    return asyncio.run(read())


def _own_smarthost(stack, flags: list[str]) -> subprocess.Popen:
    from pipeline.localstack.smarthost import smarthost_dump_dir, smtp_sink_argv

    port = int(stack.env["POSTSTELLE_SINKS__SMARTHOST__PORT"])
    stack.cli("stop", "smarthost")
    stack.wait_for(lambda: _closed(port), timeout=20, what="the stack's smarthost to stop")
    process = subprocess.Popen(smtp_sink_argv("127.0.0.1", port, smarthost_dump_dir(stack.home), flags))
    stack.wait_for(lambda: not _closed(port), timeout=20, what="our smarthost to listen")
    return process


def _closed(port: int) -> bool:
    try:
        smtplib.SMTP("127.0.0.1", port, timeout=2).quit()
        return False
    except (OSError, smtplib.SMTPException):
        return True


def _restore_smarthost(stack, process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(10)
    stack.cli("start", "smarthost")
    stack.wait_ready(timeout=60)


def test_smarthost_answering_4xx_then_250_delivers_once(stack):
    test_id = new_test_id()
    own = _own_smarthost(stack, ["-r", "RCPT"])
    try:
        message_id = _route_to_smarthost(stack, "lena.mueller@school.test", "freund@ext.test", test_id)
        stack.wait_for(lambda: any(e["type"] == "deferred" for e in _delivery_events(stack, message_id)),
                       timeout=30, what="the deferral")
    finally:
        _restore_smarthost(stack, own)
    events = stack.wait_for(
        lambda: (lambda es: es if any(e["type"] == "delivered" for e in es) else None)(
            _delivery_events(stack, message_id)), timeout=30, what="the delivery after the retry")
    assert [e["type"] for e in events].count("delivered") == 1
    deferred = next(e for e in events if e["type"] == "deferred")
    assert deferred["reply"]["code"] // 100 == 4
    from pipeline.localstack.smarthost import smarthost_dump_dir

    dumps = [p for p in smarthost_dump_dir(stack.home).rglob("*") if p.is_file() and test_id.encode() in p.read_bytes()]
    assert len(dumps) == 1


def test_smarthost_answering_5xx_gives_a_dsn(stack):
    sender = "tom.becker@school.test"
    own = _own_smarthost(stack, ["-f", "RCPT"])
    try:
        message_id = _route_to_smarthost(stack, sender, "unbekannt@ext.test", new_test_id())
        stack.wait_for(lambda: any(e["type"] == "bounced" for e in _delivery_events(stack, message_id)),
                       timeout=30, what="the bounce")
    finally:
        _restore_smarthost(stack, own)
    dsn = stack.wait_for(lambda: _dsns_about(stack, sender, "unbekannt@ext.test"), timeout=60, what="the DSN")[0]
    assert _status_fields(dsn)["status"].startswith("5.")
