"""SMTP-time verdicts against the real stack: the ingress answers after the pipeline's outcome.

The stack's ingress follows poststelle.outcomes; its verdict service turns rejections the sender
was not told of into quarantine. The content stages that reject (virus, blocklist, auth) have their
own DATA-554 tests; here the routing outcome, the wait running out, and the verdict service.
"""
from __future__ import annotations

import asyncio
import smtplib
import time

from aiokafka import AIOKafkaProducer

from pipeline.bus import Topics
from pipeline.cli.components import load_config
from schemas.events import (
    AcceptedEarly,
    BlobRef,
    Client,
    Envelope,
    MessageOutcome,
    Quarantined,
    Received,
    Rejected,
    encode_event,
    iso_from_epoch,
)
from schemas.ids import new_id
from tests.integration.conftest import make_message, new_test_id, read_all

RCPT = "lena.mueller@school.test"


def topics(stack) -> Topics:
    return Topics.from_settings(load_config(stack.env["POSTSTELLE_CONFIG"], environ=stack.env))


def queued_id(reply: bytes) -> str:
    return reply.decode().rsplit(" ", 1)[1]  # "2.0.0 Ok: queued as <id>"


def send_timed(stack, test_id: str) -> tuple[str, float]:
    with smtplib.SMTP("127.0.0.1", stack.smtp_port, timeout=60) as client:
        client.ehlo("client.test")
        client.mail("sender@good.test")
        client.rcpt(RCPT)
        started = time.monotonic()
        code, reply = client.data(make_message(test_id, to=RCPT))
    assert code == 250, reply
    return queued_id(reply), time.monotonic() - started


def test_the_250_comes_after_the_pipeline_routed_the_message(stack):
    message_id, _ = send_timed(stack, new_test_id())
    t = topics(stack)
    (outcome,) = read_all(stack, t.outcomes, lambda e: e.message_id == message_id)
    assert isinstance(outcome, MessageOutcome)
    assert (outcome.disposition, outcome.recipients) == ("routed", [RCPT])
    assert read_all(stack, t.accepted_early, lambda e: e.message_id == message_id) == []


def test_without_a_verdict_in_time_the_message_is_accepted_early_and_still_delivered(stack):
    wait = float(stack.env["POSTSTELLE_INGRESS__VERDICT_WAIT"])
    test_id = new_test_id()
    stack.hold("stage:route")
    try:
        message_id, took = send_timed(stack, test_id)
    finally:
        stack.release("stage:route")
    assert took >= wait
    (early,) = read_all(stack, topics(stack).accepted_early, lambda e: e.message_id == message_id)
    assert isinstance(early, AcceptedEarly) and early.waited_ms >= wait * 1000
    stack.wait_for(lambda: stack.test_ids(RCPT)[test_id] == 1, timeout=60, what="the delivery after the wait")


def _rejected(answer_by: str) -> Rejected:
    received = Received(message_id=new_id(), envelope=Envelope(mail_from="a@ext.test", rcpt_to=[RCPT]),
                        client=Client(ip="192.0.2.1", port=25), blob=BlobRef(sha256="0" * 64, size=1),
                        answer_by=answer_by)
    return Rejected(message_id=received.message_id, stage="virus", reason="infected: Test-Sig",
                    recipients=[RCPT], message=received)


def test_the_verdict_service_quarantines_only_rejections_the_sender_was_not_told_of(stack):
    """The test plays a stage (rejected events) and the ingress (accepted-early records)."""
    t = topics(stack)
    past = iso_from_epoch(time.time() - 60)
    told_554 = _rejected(past)  # the ingress saw it in time: no accepted-early record
    told_250 = _rejected(past)  # the wait ran out: accepted early
    never_waited = _rejected("")  # verdict_wait = 0 at that ingress
    soon = _rejected(iso_from_epoch(time.time() + 3))  # the ingress is still waiting: held until then

    async def publish() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
        await producer.start()
        try:
            for mid in (told_250.message_id, soon.message_id):
                await producer.send_and_wait(t.accepted_early, encode_event(AcceptedEarly(message_id=mid)),
                                             key=mid.encode())
            for event in (told_554, told_250, never_waited, soon):
                await producer.send_and_wait(t.rejected, encode_event(event), key=event.message_id.encode())
        finally:
            await producer.stop()

    asyncio.run(publish())
    ids = {e.message_id for e in (told_554, told_250, never_waited, soon)}

    def quarantined() -> dict[str, Quarantined]:
        found = read_all(stack, t.quarantine, lambda e: e.message_id in ids)
        return {e.message_id: e for e in found} if len(found) >= 3 else {}

    held = stack.wait_for(quarantined, timeout=60, interval=1.0, what="the late rejections in quarantine")
    assert set(held) == {told_250.message_id, never_waited.message_id, soon.message_id}
    assert all(e.reason == "late rejection: infected: Test-Sig" and e.stage == "virus" for e in held.values())
    time.sleep(2)  # the rejection the sender was told of stays a rejection
    assert told_554.message_id not in {e.message_id for e in read_all(stack, t.quarantine, lambda e: e.message_id in ids)}
