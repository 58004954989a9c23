"""Nothing is dropped, nothing loops: records a consumer cannot handle land whole in poststelle.deadletter,
the consumer goes on, and `poststelle deadletter replay` puts them back on their topic.

Three consumers of three kinds: a stage that raises (the test stage `probe`), the verdict service
fed a record that is no event, and the LMTP sink given a copy whose held part is not in the message.
"""
from __future__ import annotations

import asyncio
import uuid

import orjson
from aiokafka import AIOKafkaProducer

from pipeline.blobstore import FileBlobStore
from pipeline.deadletter import original_value
from schemas.events import Client, Deadlettered, Edit, Envelope, Received, Routed, encode_event
from schemas.ids import new_id
from tests.integration.conftest import LOCAL_STAGES, mail_with, new_test_id, read_all, send_data, with_probe
from tests.integration.test_verdict import topics

MAX = "max.mustermann@school.test"
BEFORE_PROBE = with_probe(LOCAL_STAGES)[with_probe(LOCAL_STAGES).index("probe") - 1]  # the topic the probe reads


def _produce(stack, topic: str, value: bytes, key: bytes) -> None:
    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(topic, value, key=key)
        finally:
            await producer.stop()

    asyncio.run(send())


def _dead_letters(stack, wanted) -> list[Deadlettered]:
    return [e for e in read_all(stack, topics(stack).deadletter) if isinstance(e, Deadlettered) and wanted(e)]


def _listed(stack) -> list[str]:
    return [row[0] for row in orjson.loads(stack.cli("deadletter", "list", "--json").stdout)["rows"]]


def _delivered(stack, test_id: str) -> bool:
    return any(f"X-Test-Id: {test_id}".encode() in raw for raw in stack.messages(MAX))


def test_a_stage_that_raises_dead_letters_the_record_goes_on_and_replay_delivers_it(stack, tmp_path):
    fixed = tmp_path / f"fixed-{uuid.uuid4().hex}"
    broken_id = new_test_id()
    reply = send_data(stack, mail_with(broken_id, [MAX], {"X-Probe-Raise": str(fixed)}), [MAX])
    assert reply.code == 250  # accepted (early: the pipeline had no verdict for it)
    (dead,) = stack.wait_for(lambda: _dead_letters(stack, lambda e: e.message_id == reply.message_id),
                             what="the stage's dead letter")
    assert (dead.consumer, dead.reason, dead.source_topic) == ("probe", "exception", f"poststelle.checked.{BEFORE_PROBE}")
    assert "RuntimeError: probe: told to fail" in dead.error
    stage_result = orjson.loads(original_value(dead, FileBlobStore(stack.home / "blobs")))
    assert stage_result["type"] == "stage_result" and stage_result["message_id"] == reply.message_id  # whole
    assert dead.id in _listed(stack)
    # the stage goes on: the next message passes it
    next_id = new_test_id()
    assert send_data(stack, mail_with(next_id, [MAX], {}), [MAX]).code == 250
    stack.wait_for(lambda: _delivered(stack, next_id), what="the next message delivered")
    assert not _delivered(stack, broken_id)
    # a person fixes the cause and replays it
    fixed.touch()
    done = stack.cli("deadletter", "replay", dead.id[:13])
    assert done.stdout.startswith(f"replayed {dead.id} to poststelle.checked.{BEFORE_PROBE}[")
    stack.wait_for(lambda: _delivered(stack, broken_id), what="the replayed message delivered")
    assert dead.id not in _listed(stack)
    again = stack.cli("deadletter", "replay", dead.id, check=False)
    assert again.returncode == 1 and "replayed before" in again.stderr


def test_the_verdict_service_dead_letters_an_undecodable_record_and_goes_on(stack):
    garbage = b'{"type": "rejected", "stage": 7}' + uuid.uuid4().hex.encode()
    t = topics(stack)
    _produce(stack, t.rejected, garbage, key=b"not-a-message")
    (dead,) = stack.wait_for(lambda: _dead_letters(stack, lambda e: e.consumer == "verdict" and e.payload.endswith(
        garbage[-32:].decode())), what="the verdict service's dead letter")
    assert dead.reason == "undecodable" and dead.key == "not-a-message" and dead.source_topic == t.rejected
    assert original_value(dead, FileBlobStore(stack.home / "blobs")) == garbage
    # still consuming: a rejection the sender was not told of (one of two recipients) is still quarantined
    lena = "lena.mueller@school.test"
    reply = send_data(stack, mail_with(new_test_id(), [MAX, lena], {"X-Probe-Reject": lena}), [MAX, lena])
    assert reply.code == 250
    stack.wait_for(lambda: [e for e in read_all(stack, t.quarantine) if e.message_id == reply.message_id],
                   timeout=60, what="the verdict service quarantining after the dead letter")
    # replay puts the record back on poststelle.rejected: it is dead-lettered a second time
    stack.cli("deadletter", "replay", dead.id)
    stack.wait_for(lambda: len(_dead_letters(stack, lambda e: e.consumer == "verdict" and e.payload == dead.payload))
                   == 2, what="the replayed record dead-lettered again")


def test_a_copy_whose_held_part_is_missing_is_dead_lettered_by_the_sink_which_goes_on(stack):
    subject = f"never delivered {uuid.uuid4().hex}"
    raw = f"From: a@example.org\r\nTo: {MAX}\r\nSubject: {subject}\r\n\r\nHallo.\r\n".encode()
    message = Received(message_id=new_id(), envelope=Envelope(mail_from="a@example.org", rcpt_to=[MAX]),
                       client=Client(ip="127.0.0.1", port=0), blob=FileBlobStore(stack.home / "blobs").put(raw))
    edit = Edit(stage="attachment", kind="replace_part", part="2", sha256="ab" * 32, value="held")
    routed = Routed(message_id=message.message_id, destination="lmtp", recipients=[MAX], message=message,
                    edits=[edit])
    _produce(stack, topics(stack).routed("lmtp"), encode_event(routed), key=message.message_id.encode())
    (dead,) = stack.wait_for(lambda: _dead_letters(stack, lambda e: e.message_id == message.message_id),
                             what="the sink's dead letter")
    assert (dead.consumer, dead.reason) == ("sink.lmtp", "unrenderable") and "PartNotFound" in dead.error
    assert original_value(dead, FileBlobStore(stack.home / "blobs")) == encode_event(routed)
    next_id = new_test_id()
    assert send_data(stack, mail_with(next_id, [MAX], {}), [MAX]).code == 250
    stack.wait_for(lambda: _delivered(stack, next_id), what="the sink delivering the next message")
    shown = stack.cli("deadletter", "show", dead.id).stdout
    assert "reason:     unrenderable" in shown and '"replace_part"' in shown
    stack.cli("deadletter", "replay", dead.id)
    stack.wait_for(lambda: len(_dead_letters(stack, lambda e: e.message_id == message.message_id)) == 2,
                   what="the replayed copy dead-lettered again")
    assert not any(subject.encode() in raw for raw in stack.messages(MAX))
