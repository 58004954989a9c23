"""The bounce service's events, without Kafka: DSNs stored and injected, refusals, which records it takes."""
from __future__ import annotations

import dataclasses

import pytest
from aiokafka.structs import ConsumerRecord

from consumers.services.bounce import BounceService
from pipeline.blobstore import FileBlobStore
from pipeline.deadletter import original_value
from pipeline.mail.dsn import dsn_message_id
from pipeline.settings import Settings
from schemas.events import Bounced, Deadlettered, Deferred, Delivered, Received, Reply, decode_event, encode_event
from schemas.ids import new_id
from tests.pipeline.mail.test_dsn import (
    MTA,
    ORIGINAL,
    _bounced,
    _build,
    _build_delay,
    _deferred,
    _parse,
    _received,
)


@pytest.fixture
def service(tmp_path) -> BounceService:
    return BounceService(Settings(), FileBlobStore(tmp_path / "blobs"))


def _stored_bounced(service: BounceService, **kwargs) -> Bounced:
    ref = service.blobs.put(ORIGINAL)
    return _bounced(message=_received(blob=ref, mail_from=kwargs.pop("mail_from", "alice@ext.test")), **kwargs)


def test_service_stores_the_dsn_and_makes_a_received_event(service):
    bounced = _stored_bounced(service)
    event = service.dsn_event(bounced)
    assert isinstance(event, Received)
    assert event.message_id == dsn_message_id(bounced)
    assert event.envelope.mail_from == ""
    assert event.envelope.rcpt_to == ["alice@ext.test"]
    assert event.client.ip == "127.0.0.1" and event.client.port == 0 and event.client.helo == MTA
    assert event.listener == "dsn" and event.ingress_host == MTA
    assert event.headers.subject == "Undelivered Mail Returned to Sender"
    dsn = service.blobs.get(event.blob)
    assert dsn == _build(bounced)
    assert "Subject: Klassenfahrt" in list(_parse(dsn).iter_parts())[2].get_content()
    assert service.stats.sent == 1
    # the same bounced event again: the same message id and event id (the ledger and analytics dedupe)
    again = service.dsn_event(decode_event(encode_event(bounced)))
    assert (again.message_id, again.id, again.blob) == (event.message_id, event.id, event.blob)


def test_service_refuses_without_storing_anything(service, tmp_path):
    bounced = _stored_bounced(service, mail_from="")
    before = sorted(p.name for p in (tmp_path / "blobs").rglob("*") if p.is_file())
    assert service.dsn_event(bounced) is None
    assert sorted(p.name for p in (tmp_path / "blobs").rglob("*") if p.is_file()) == before
    assert service.stats.refused == 1


def test_service_builds_the_dsn_without_headers_when_the_original_is_gone(service, caplog):
    bounced = _bounced()  # its blob was never stored
    event = service.dsn_event(bounced)
    assert event is not None
    parts = list(_parse(service.blobs.get(event.blob)).iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/delivery-status"]
    assert "missing" in caplog.text


def _record(value: bytes, offset: int = 0) -> ConsumerRecord:
    return ConsumerRecord(topic="t.delivery", partition=0, offset=offset, timestamp=0, timestamp_type=0, key=b"k",
                          value=value, checksum=None, serialized_key_size=1, serialized_value_size=len(value),
                          headers=[])


async def test_service_handles_only_bounced_records_and_dead_letters_undecodable_ones(service):
    bounced = _stored_bounced(service)
    delivered = Delivered(message_id=new_id(), destination="lmtp", recipient="bob@school.test", attempt=1,
                          reply=Reply(code=250))
    assert await service.outputs_of(_record(encode_event(delivered))) == []
    for garbage in (b"{not json", b'{"type": "bounced", "schema_version": 1}'):
        (dead,) = await service.outputs_of(_record(garbage))
        assert dead.topic == service.topics.deadletter and isinstance(dead.event, Deadlettered)
        assert dead.event.reason == "undecodable" and original_value(dead.event, service.blobs) == garbage
        assert dead.event.consumer == "bounce" and dead.key == b"k"
    outputs = await service.outputs_of(_record(encode_event(bounced)))
    assert [(o.topic, o.key) for o in outputs] == [(service.topics.received, dsn_message_id(bounced).encode())]
    assert service.stats.skipped == 1 and service.stats.sent == 1 and service.deadlettered == 2



def _stored_deferred(service: BounceService, **kwargs) -> Deferred:
    deferred = _deferred(**kwargs)
    message = dataclasses.replace(deferred.routed.message, blob=service.blobs.put(ORIGINAL))
    return dataclasses.replace(deferred, routed=dataclasses.replace(deferred.routed, message=message))


async def test_a_deferral_marked_for_a_delay_notice_gets_one_until_the_lifetime_ends(service):
    deferred = _stored_deferred(service)
    event = service.dsn_event(deferred)
    assert event is not None and event.envelope.mail_from == "" and event.envelope.rcpt_to == ["alice@ext.test"]
    assert event.headers.subject == "Delayed Mail (still being retried)"
    # Will-Retry-Until: accepted + delivery.lifetime (7 days by default)
    assert service.blobs.get(event.blob) == _build_delay(deferred)
    assert service.stats.sent == 1 and service.stats.delayed == 1
    outputs = await service.outputs_of(_record(encode_event(deferred)))
    assert [(o.topic, o.key) for o in outputs] == [(service.topics.received, dsn_message_id(deferred).encode())]
    # a deferral the sink did not mark is no concern of the bounce service
    unmarked = dataclasses.replace(deferred, id=new_id(), delay_notice=False)
    assert await service.outputs_of(_record(encode_event(unmarked))) == []
    assert service.stats.skipped == 1 and service.stats.sent == 2


def test_a_delay_notice_to_the_null_sender_is_refused(service):
    assert service.dsn_event(_stored_deferred(service, mail_from="")) is None
    assert service.stats.refused == 1 and service.stats.delayed == 0
