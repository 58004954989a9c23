"""The delivery sink's record → events logic, without Kafka: what cannot be delivered is dead-lettered whole.

A recording transport stands in for the next hop; the ledger is never written on these paths (the
sink fails before it delivers), so no broker is needed.
"""
from __future__ import annotations

import dkim
import pytest
from aiokafka.structs import ConsumerRecord

from consumers.sinks.delivery import DeliverySink, delay_notice_due
from consumers.sinks.transport import Delivery
from pipeline.blobstore import FileBlobStore
from pipeline.deadletter import original_value
from pipeline.mail.dkim_sign import DkimSigner
from pipeline.outbound_settings import DkimKey, DkimSettings
from pipeline.settings import ConfigError, DeliverySettings, PathSettings, Settings
from schemas.events import (
    BlobRef,
    Client,
    Deadlettered,
    Edit,
    Envelope,
    Received,
    Reply,
    Routed,
    encode_event,
    iso_from_epoch,
)
from schemas.ids import new_id

RAW = b"From: a@ext.test\r\nSubject: hi\r\n\r\nHallo.\r\n"


class RecordingTransport:
    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []

    async def deliver(self, delivery: Delivery) -> dict[str, Reply]:
        self.deliveries.append(delivery)
        return {r: Reply(code=250, enhanced="2.0.0", text="ok") for r in delivery.recipients}


def _sink(tmp_path) -> tuple[DeliverySink, RecordingTransport, FileBlobStore]:
    blobs = FileBlobStore(tmp_path / "blobs")
    transport = RecordingTransport()
    settings = Settings(paths=PathSettings(home=str(tmp_path)))
    return DeliverySink(settings, "lmtp", transport, blobs, inflight=4), transport, blobs


def _record(value: bytes, key: bytes = b"m1") -> ConsumerRecord:
    return ConsumerRecord(topic="poststelle.routed.lmtp", partition=2, offset=11, timestamp=0, timestamp_type=0,
                          key=key, value=value, checksum=None, serialized_key_size=len(key),
                          serialized_value_size=len(value), headers=[])


def _routed(blobs: FileBlobStore, edits: list[Edit]) -> Routed:
    message = Received(message_id=new_id(), envelope=Envelope(mail_from="a@ext.test", rcpt_to=["b@school.test"]),
                       client=Client(ip="192.0.2.1", port=1), blob=blobs.put(RAW))
    return Routed(message_id=message.message_id, destination="lmtp", recipients=["b@school.test"], message=message,
                  edits=edits)


async def test_a_copy_whose_part_cannot_be_found_is_dead_lettered_not_delivered(tmp_path):
    sink, transport, blobs = _sink(tmp_path)
    routed = _routed(blobs, [Edit(stage="attachment", kind="replace_part", part="2", sha256="ab" * 32, value="x")])
    value = encode_event(routed)
    (dead,) = await sink._deliver_record(_record(value))
    assert isinstance(dead, Deadlettered) and dead.reason == "unrenderable"
    assert "PartNotFound" in dead.error and dead.consumer == "sink.lmtp"
    assert (dead.source_topic, dead.partition, dead.offset, dead.key) == ("poststelle.routed.lmtp", 2, 11, "m1")
    assert original_value(dead, blobs) == value  # whole, so `poststelle deadletter replay` can put it back
    assert dead.message_id == routed.message_id
    assert transport.deliveries == []  # the part it was meant to hold back never left
    assert sink.outputs_for(dead, b"m1") == [(sink.topics.deadletter, b"m1")]


async def test_an_undecodable_record_is_dead_lettered(tmp_path):
    sink, transport, blobs = _sink(tmp_path)
    (dead,) = await sink._deliver_record(_record(b"\xff\xfe garbage"))
    assert dead.reason == "undecodable" and dead.payload_encoding == "base64"
    assert original_value(dead, blobs) == b"\xff\xfe garbage"
    assert transport.deliveries == []


async def test_a_signing_sink_signs_the_message_as_it_leaves_after_every_edit(tmp_path, resolver):
    """The signature covers the rendered message (the spam stage's header included) and verifies against
    the key NSD publishes; the outbound sinks (smarthost, mx) are built with this signer."""
    blobs = FileBlobStore(tmp_path / "blobs")
    transport = RecordingTransport()
    signer = DkimSigner.from_settings(DkimSettings(keys=[DkimKey(
        domain="school.test", selector="s2026", key_file="deploy/local/dns/keys/school.test.s2026.private")]))
    sink = DeliverySink(Settings(paths=PathSettings(home=str(tmp_path))), "smarthost", transport, blobs, inflight=4,
                        signer=signer)
    raw = b"From: Anna <anna.schmidt@school.test>\r\nTo: x@outside.test\r\nSubject: hi\r\n\r\nHallo.\r\n"
    message = Received(message_id=new_id(), envelope=Envelope(mail_from="anna.schmidt@school.test",
                                                              rcpt_to=["x@outside.test"]),
                       client=Client(ip="127.0.0.1", port=1), blob=blobs.put(raw))
    routed = Routed(message_id=message.message_id, destination="smarthost", recipients=["x@outside.test"],
                    message=message, edits=[Edit(stage="spam", kind="add_header", name="X-Spam-Status", value="No")])
    assert (await sink._send(routed, ["x@outside.test"]))["x@outside.test"].code == 250
    (sent,) = transport.deliveries
    assert sent.data.startswith(b"DKIM-Signature:") and b"X-Spam-Status: No\r\n" in sent.data
    record = await resolver.txt("s2026._domainkey.school.test")
    assert dkim.verify(sent.data, dnsfunc=lambda name, timeout=5: record.records[0].encode())


def _retried(accepted: float, previous_attempt: float | None) -> Routed:
    """A copy accepted at `accepted`; tried before at `previous_attempt` (None: never tried)."""
    message = Received(message_id=new_id(), time=iso_from_epoch(accepted),
                       envelope=Envelope(mail_from="a@ext.test", rcpt_to=["b@school.test"]),
                       client=Client(ip="192.0.2.1", port=1), blob=BlobRef(sha256="0" * 64, size=1))
    if previous_attempt is None:
        return Routed(message_id=message.message_id, destination="lmtp", recipients=["b@school.test"],
                      message=message, time=iso_from_epoch(accepted + 1))
    return Routed(message_id=message.message_id, destination="lmtp", recipients=["b@school.test"],
                  message=message, time=iso_from_epoch(previous_attempt), attempt=3)


def test_one_deferral_tells_the_sender_of_the_delay_the_one_that_passes_the_warning_age():
    hour, t0 = 3600.0, 1_700_000_000.0
    # the retries of one delivery with a 4 h warning: attempts at 0.5 h, 2 h, 3.9 h, 4.2 h, 8 h
    attempts = [t0 + h * hour for h in (0.5, 2, 3.9, 4.2, 8)]
    due = [delay_notice_due(_retried(t0, previous), now, 4 * hour)
           for previous, now in zip([None, *attempts], attempts)]
    assert due == [False, False, False, True, False]
    # a first attempt that comes late (the pipeline was held up) tells at once
    assert delay_notice_due(_retried(t0, None), t0 + 5 * hour, 4 * hour)
    # exactly at the warning age counts as past it; a second deferral after it does not tell again
    assert delay_notice_due(_retried(t0, t0 + hour), t0 + 4 * hour, 4 * hour)
    assert not delay_notice_due(_retried(t0, t0 + 4 * hour), t0 + 6 * hour, 4 * hour)
    # delay_warning = "0": never
    assert not delay_notice_due(_retried(t0, t0 + hour), t0 + 9 * hour, 0.0)


def test_delay_warning_is_a_duration_or_0_for_never():
    assert DeliverySettings().delay_warning_seconds == 4 * 3600
    assert DeliverySettings(delay_warning="0").delay_warning_seconds == 0
    assert DeliverySettings(delay_warning="90m").delay_warning_seconds == 5400
    with pytest.raises(ConfigError, match="delivery.delay_warning"):
        DeliverySettings(delay_warning="soon")
