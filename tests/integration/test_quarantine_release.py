"""Releasing from the quarantine against the real stack: the action and the copy in one transaction.

A spam held for lena (quarantine on) is released through `QuarantineActions` the way the portal,
a digest link and the CLI do: it reaches her mailbox once, with the spam stage's headers; a second
release is refused; a fresh reader of the quarantine topic (another process) sees it released.
"""
from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from pipeline.blobstore import FileBlobStore
from pipeline.cli.components import load_config
from pipeline.producers import TransactionalProducer
from pipeline.state.quarantine import QuarantineView, read_quarantine_state
from pipeline.state.quarantine_actions import ActionRefused, QuarantineActions
from tests.integration.conftest import Stack, new_test_id, send_data
from tests.integration.test_spam import LENA, SPAM_BODY, SPAM_SUBJECT, delivered, header, message

pytestmark = pytest.mark.integration


def quarantine_on(stack: Stack, address: str) -> None:
    stack.cli("user", "set", address, "quarantine=on")
    stack.wait_for(lambda: orjson.loads(stack.cli("user", "show", address, "--json").stdout)["settings"]["quarantine"],
                   what=f"{address}'s quarantine setting")
    time.sleep(3.0)  # the spam stage follows the users topic: well within this


async def _release(stack: Stack, message_id: str) -> tuple[str, str]:
    settings = load_config(environ=stack.env)
    view = QuarantineView(settings, "test-release")
    producer = TransactionalProducer(settings.kafka, "test-release")
    try:
        assert await view.start(30)
        entries = await asyncio.wait_for(_entries_of(view, message_id), 60)
        [entry] = entries
        actions = QuarantineActions(settings, view, producer, FileBlobStore(settings.home / "blobs"))
        action = await actions.release(entry.id, "cli:test@localhost")
        with pytest.raises(ActionRefused, match="released already"):
            await actions.release(entry.id, "cli:test@localhost")
        return entry.id, action.released_as
    finally:
        await producer.discard()
        await view.close()


async def _entries_of(view: QuarantineView, message_id: str):
    while not view.state.by_message(message_id):
        await asyncio.sleep(0.2)
    return view.state.by_message(message_id)


def test_a_released_spam_is_delivered_once_with_its_headers(stack: Stack) -> None:
    quarantine_on(stack, LENA)
    try:
        test_id = new_test_id()
        reply = send_data(stack, message(test_id, [LENA], SPAM_SUBJECT, SPAM_BODY), [LENA])
        assert reply.code == 250, reply
        entry, released_as = asyncio.run(_release(stack, reply.message_id))
        assert released_as == reply.message_id
        raw = delivered(stack, LENA, test_id)
        assert header(raw, "X-Spam-Status").startswith("Yes") and header(raw, "Subject") == SPAM_SUBJECT  # held, not tagged
        state = asyncio.run(read_quarantine_state(load_config(environ=stack.env)))
        assert state.entries[entry].status == "released"
        assert state.entries[entry].actions[-1].by == "cli:test@localhost"
        time.sleep(3)
        assert stack.test_ids(LENA)[test_id] == 1
    finally:
        stack.cli("user", "reset", LENA, check=False)
