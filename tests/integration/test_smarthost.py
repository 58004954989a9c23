"""The smarthost sink against the real stack: a routed event goes out over SMTP to Postfix's smtp-sink.

The event is put on `poststelle.routed.smarthost` as the route stage would (relaying from the ingress
needs authenticated submission, not built yet). What must hold: the smarthost gets the envelope and
the rendered message byte for byte (edits applied, dot-stuffing undone), exactly once, under a
DKIM signature of school.test that covers it (`[dkim]` of the local config) and verifies against the
key NSD publishes, and the sink commits a `delivered` event carrying the smarthost's reply.
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from pipeline.blobstore import FileBlobStore
from pipeline.localstack.smarthost import smarthost_dump_dir
from schemas.events import Client, Edit, Envelope, HeaderSummary, Received, Routed, encode_event
from schemas.ids import new_id
from tests.integration.conftest import new_test_id
from tests.integration.test_outbound import _verifies

SENDER, RECIPIENT = "lena.mueller@school.test", "someone@ext.test"


def _message(test_id: str) -> bytes:
    return (f"From: Lena Mueller <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: nach draussen\r\n"
            f"X-Test-Id: {test_id}\r\nMessage-ID: <{test_id}@school.test>\r\n\r\n"
            ".eine Zeile mit Punkt\r\n.\r\nEnde.\r\n").encode()


def _routed(stack, raw: bytes) -> Routed:
    ref = FileBlobStore(stack.home / "blobs").put(raw)
    message = Received(message_id=new_id(), envelope=Envelope(mail_from=SENDER, rcpt_to=[RECIPIENT]),
                       client=Client(ip="127.0.0.1", port=0, helo="client.school.test"), blob=ref,
                       headers=HeaderSummary(subject="nach draussen"))
    return Routed(message_id=message.message_id, destination="smarthost", recipients=[RECIPIENT],
                  message=message, edits=[Edit(stage="spam", kind="add_header", name="X-Spam-Status", value="No")])


async def _produce(bootstrap: str, routed: Routed) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait("poststelle.routed.smarthost", encode_event(routed),
                                     key=routed.message_id.encode())
    finally:
        await producer.stop()


async def _delivery_events(bootstrap: str, message_id: str, timeout: float) -> list[dict]:
    """Committed events of `message_id` on poststelle.delivery, read until one is `delivered`."""
    consumer = AIOKafkaConsumer("poststelle.delivery", bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                isolation_level="read_committed", enable_auto_commit=False)
    await consumer.start()
    found: list[dict] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                found += [e for e in (orjson.loads(r.value) for r in records) if e.get("message_id") == message_id]
            if any(e["type"] == "delivered" for e in found):
                return found
    finally:
        await consumer.stop()
    raise AssertionError(f"no delivered event for {message_id} within {timeout}s; got {found}")


def _dumps_with(dump_dir: Path, test_id: str) -> list[bytes]:
    if not dump_dir.is_dir():
        return []
    return [p.read_bytes() for p in sorted(dump_dir.iterdir()) if p.is_file() and test_id.encode() in p.read_bytes()]


def test_routed_message_reaches_the_smarthost_and_is_recorded_delivered(stack):
    test_id = new_test_id()
    raw = _message(test_id)
    routed = _routed(stack, raw)
    # smtp-sink writes what it received with LF endings and one empty line after it
    expected_body = b"X-Spam-Status: No\n" + raw.replace(b"\r\n", b"\n") + b"\n"

    asyncio.run(_produce(stack.bootstrap, routed))

    dump_dir = smarthost_dump_dir(stack.home)
    [dump] = stack.wait_for(lambda: [d for d in _dumps_with(dump_dir, test_id) if d.endswith(expected_body)],
                            timeout=60, what="the message in the smarthost's dump dir")
    head = dump[: -len(expected_body)].decode()
    assert f"X-Mail-Args: <{SENDER}>\n" in head
    assert head.count("X-Rcpt-Args:") == 1 and f"X-Rcpt-Args: <{RECIPIENT}>\n" in head
    assert "X-Client-Proto: ESMTP\n" in head  # SMTP, not LMTP
    signed = dump[dump.index(b"DKIM-Signature:"):].replace(b"\n", b"\r\n")  # signed after the spam edit
    assert signed.index(b"X-Spam-Status: No") > 0 and _verifies(stack, signed)

    events = asyncio.run(_delivery_events(stack.bootstrap, routed.message_id, timeout=60))
    delivered = [e for e in events if e["type"] == "delivered"]
    assert len(delivered) == 1
    assert delivered[0]["destination"] == "smarthost" and delivered[0]["recipient"] == RECIPIENT
    assert delivered[0]["reply"]["code"] == 250 and delivered[0]["attempt"] == 1
    attempts = [e for e in events if e["type"] == "delivery_attempt"]
    assert [(a["recipient"], a["reply"]["code"]) for a in attempts] == [(RECIPIENT, 250)]
    assert not any(e["type"] in ("deferred", "bounced") for e in events)
    assert len(_dumps_with(dump_dir, test_id)) == 1  # delivered once
