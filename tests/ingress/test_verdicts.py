"""The SMTP-time verdict: after storing a message the ingress waits for the pipeline's outcome.

The outcome source is swapped for an in-memory one (the Kafka follower is tested against the real
broker in tests/integration/test_verdicts_kafka.py); the handler, the SMTP session and the reply
logic are the real ones.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import pytest

from ingress.handler import IngressHandler
from ingress.server import make_protocol
from ingress.verdicts import Pending, refusal_text
from pipeline.blobstore import FileBlobStore
from pipeline.settings import IngressSettings
from schemas.events import AcceptedEarly, MessageOutcome, Received, epoch_from_iso
from tests.ingress.test_smtp_session import Client, MemorySink

RCPTS = ["max.mustermann@school.test", "lena.mueller@school.test"]


class ScriptedPipeline(MemorySink):
    """Stores like MemorySink; when a message is persisted, the 'pipeline' answers with `script`."""

    def __init__(self, outcomes: "MemoryOutcomes", script, delay: float = 0.05, early_fails: bool = False) -> None:
        super().__init__()
        self.outcomes, self.script, self.delay, self.early_fails = outcomes, script, delay, early_fails
        self.early: list[AcceptedEarly] = []

    async def persist(self, event: Received, stored: Awaitable[None]) -> None:
        await super().persist(event, stored)
        loop = asyncio.get_running_loop()
        for outcome in self.script(event):
            loop.call_later(self.delay, self.outcomes.deliver, outcome)

    async def accepted_early(self, event: AcceptedEarly) -> None:
        if self.early_fails:
            raise ConnectionError("broker gone")
        self.early.append(event)


class MemoryOutcomes:
    """The OutcomeFollower's interface over a dict (what Kafka delivers, handed in by the test)."""

    ready = True

    def __init__(self) -> None:
        self.waiting: dict[str, Pending] = {}

    def expect(self, message_id: str, recipients: list[str]) -> Pending:
        self.waiting[message_id] = pending = Pending(recipients=set(recipients))
        return pending

    def forget(self, message_id: str) -> None:
        self.waiting.pop(message_id, None)

    def deliver(self, outcome: MessageOutcome) -> None:
        pending = self.waiting.get(outcome.message_id)
        if pending is not None:
            pending.add(outcome)


def rejected(stage: str, reason: str):
    return lambda event: [MessageOutcome(message_id=event.message_id, stage=stage, disposition="rejected",
                                         recipients=list(event.envelope.rcpt_to), reason=reason)]


def routed(event: Received) -> list[MessageOutcome]:  # one recipient after the other, as two sinks would
    return [MessageOutcome(message_id=event.message_id, stage="route", disposition="routed", recipients=[r])
            for r in event.envelope.rcpt_to]


def silent(event: Received) -> list[MessageOutcome]:
    return []


@pytest.fixture
async def send(tmp_path):
    servers = []

    async def _send(script, *, wait: float = 2.0, early_fails: bool = False, delay: float = 0.05):
        outcomes = MemoryOutcomes()
        sink = ScriptedPipeline(outcomes, script, delay=delay, early_fails=early_fails)
        settings = IngressSettings(verdict_wait=wait)
        handler = IngressHandler(settings, FileBlobStore(tmp_path / "blobs"), sink, verdicts=outcomes)
        server = await asyncio.get_running_loop().create_server(make_protocol(handler, settings), "127.0.0.1", 0)
        servers.append(server)
        client = Client(*await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1]))
        await client.reply()
        await client.cmd("EHLO c.ext.test")
        await client.cmd("MAIL FROM:<a@ext.test>")
        for rcpt in RCPTS:
            await client.cmd(f"RCPT TO:<{rcpt}>")
        await client.cmd("DATA")
        started = asyncio.get_running_loop().time()
        reply = await client.cmd("Subject: hallo\r\n\r\nHallo.\r\n.")
        return reply, sink, outcomes, asyncio.get_running_loop().time() - started

    yield _send
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_a_rejection_in_time_is_554_at_data_with_the_reason(send):
    reply, sink, outcomes, _ = await send(rejected("virus", "infected: Eicar-Test-Signature"))
    assert reply == "554 5.7.1 Message refused by virus check: infected: Eicar-Test-Signature"
    (received,) = sink.persisted
    (reject,) = sink.rejects()
    assert (reject.phase, reject.check, reject.reason_code, reject.message_id) == (
        "data", "virus", "virus_rejected", received.message_id)
    assert sink.early == [] and outcomes.waiting == {}  # nothing left behind


async def test_routed_for_every_recipient_is_250_without_waiting_out_the_time(send):
    reply, sink, _, took = await send(routed, wait=5.0)
    assert reply.startswith("250 2.0.0 Ok: queued as ")
    assert took < 2.0 and sink.early == [] and sink.rejects() == []


async def test_no_verdict_in_time_is_250_and_recorded_as_accepted_early(send):
    reply, sink, _, took = await send(silent, wait=0.3)
    (received,) = sink.persisted
    assert reply == f"250 2.0.0 Ok: queued as {received.message_id}"
    assert took >= 0.3
    (early,) = sink.early
    assert early.message_id == received.message_id and early.waited_ms >= 300
    # the event tells the verdict service by when the client was answered
    assert epoch_from_iso(received.answer_by) > epoch_from_iso(received.time)


async def test_a_rejection_after_the_wait_is_too_late_for_554(send):
    reply, sink, _, _ = await send(rejected("virus", "infected"), wait=0.2, delay=0.6)
    assert reply.startswith("250 ") and len(sink.early) == 1


async def test_when_the_accepted_early_record_fails_the_client_must_retry(send):
    reply, sink, _, _ = await send(silent, wait=0.2, early_fails=True)
    assert reply == "451 4.3.0 Temporary failure storing the message, try again later"
    assert [r.reason_code for r in sink.rejects()] == ["verdict_record_failed"]


async def test_wait_zero_answers_at_once_and_leaves_answer_by_empty(send):
    reply, sink, _, _ = await send(rejected("virus", "infected"), wait=0.0)
    assert reply.startswith("250 ")
    (received,) = sink.persisted
    assert received.answer_by == "" and sink.early == []  # every rejection of it becomes quarantine


def test_pending_is_done_when_every_recipient_has_an_outcome():
    pending = Pending(recipients={"a@x.test", "b@x.test"})
    pending.add(MessageOutcome(stage="route", disposition="routed", recipients=["a@x.test"]))
    assert not pending.done.is_set() and pending.rejection is None
    pending.add(MessageOutcome(stage="route", disposition="routed", recipients=["b@x.test"]))
    assert pending.done.is_set() and pending.rejection is None


def test_quarantine_decides_for_the_whole_message_and_is_no_rejection():
    pending = Pending(recipients={"a@x.test", "b@x.test"})
    pending.add(MessageOutcome(stage="attachment", disposition="quarantined", recipients=["a@x.test", "b@x.test"]))
    assert pending.done.is_set() and pending.rejection is None


def test_the_refusal_text_is_one_bounded_line():
    outcome = MessageOutcome(stage="blocklist", disposition="rejected", recipients=[],
                             reason="sender\r\ndomain   blocked " + "x" * 500)
    text = refusal_text(outcome)
    assert text.startswith("554 5.7.1 Message refused by blocklist check: sender domain blocked x")
    assert "\r" not in text and "\n" not in text and len(text) < 300


# ---- per recipient ------------------------------------------------------------------------------


def one_rejected_one_routed(event: Received) -> list[MessageOutcome]:
    first, second = event.envelope.rcpt_to
    return [MessageOutcome(message_id=event.message_id, stage="spam", disposition="rejected", recipients=[first],
                           reason="spam for this user"),
            MessageOutcome(message_id=event.message_id, stage="route", disposition="routed", recipients=[second])]


def every_recipient_rejected_one_by_one(event: Received) -> list[MessageOutcome]:
    return [MessageOutcome(message_id=event.message_id, stage="blocklist", disposition="rejected", recipients=[r],
                           reason=f"no mail for {r}") for r in event.envelope.rcpt_to]


async def test_a_rejection_of_some_recipients_is_250_and_recorded_for_quarantine(send):
    reply, sink, _, took = await send(one_rejected_one_routed, wait=5.0)
    (received,) = sink.persisted
    assert reply == f"250 2.0.0 Ok: queued as {received.message_id}"
    assert took < 2.0  # the verdict was complete: no waiting out the time
    (early,) = sink.early  # the client was not told of the rejection: the verdict service must quarantine it
    assert early.message_id == received.message_id and early.reason == "partial"
    assert sink.rejects() == []


async def test_554_when_every_recipient_was_rejected_even_in_separate_outcomes(send):
    reply, sink, _, _ = await send(every_recipient_rejected_one_by_one)
    assert reply == f"554 5.7.1 Message refused by blocklist check: no mail for {RCPTS[0]}"
    assert sink.early == []


def test_a_replaced_recipient_waits_for_the_addresses_it_became():
    pending = Pending(recipients={"9a@x.test", "anna@x.test"})
    pending.add(MessageOutcome(stage="expand", disposition="replaced", recipients=["9a@x.test"],
                               into=["max@x.test", "lena@x.test", "anna@x.test"]))
    assert pending.recipients == {"max@x.test", "lena@x.test", "anna@x.test"} and not pending.done.is_set()
    pending.add(MessageOutcome(stage="route", disposition="routed", recipients=["anna@x.test", "max@x.test"]))
    assert not pending.done.is_set()
    pending.add(MessageOutcome(stage="spam", disposition="quarantined", recipients=["lena@x.test"]))
    assert pending.done.is_set() and pending.rejection is None and not pending.partly_rejected


def test_a_replacement_into_an_address_already_decided_does_not_wait_for_it_again():
    pending = Pending(recipients={"a@x.test", "list@x.test"})
    pending.add(MessageOutcome(stage="s", disposition="rejected", recipients=["a@x.test"], reason="r"))
    pending.add(MessageOutcome(stage="expand", disposition="replaced", recipients=["list@x.test"],
                               into=["a@x.test", "b@x.test"]))
    assert pending.recipients == {"b@x.test"}
    pending.add(MessageOutcome(stage="s", disposition="rejected", recipients=["b@x.test"], reason="r"))
    assert pending.done.is_set() and pending.rejection is not None
