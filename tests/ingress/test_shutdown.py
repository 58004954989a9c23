"""Stopping the ingress: every session ends with a 421, and nothing is committed unanswered.

A message being persisted gets its real answer before the session ends; a message whose DATA ends
after the stop began gets the 421 instead of being persisted, so a client never retries a message
that was committed (the duplicate a SIGTERM mid-run could cause). The sink is in memory, the SMTP
protocol and blob store are real.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import pytest

from ingress.handler import IngressHandler
from ingress.server import make_protocol
from pipeline.blobstore import FileBlobStore
from pipeline.settings import IngressSettings
from schemas.events import Received
from tests.ingress.test_smtp_session import MESSAGE, Client, MemorySink

pytestmark = pytest.mark.timeout(30)
GOODBYE = "421 4.3.2 Service shutting down, try again later"


class GatedSink(MemorySink):
    """Persists only once `gate` is set (a group commit in flight at the stop)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def persist(self, event: Received, stored: Awaitable[None]) -> None:
        self.entered.set()
        await self.gate.wait()
        await super().persist(event, stored)


@pytest.fixture
async def ingress(tmp_path):
    made = []

    async def _start(sink: MemorySink):
        settings = IngressSettings()
        handler = IngressHandler(settings, FileBlobStore(tmp_path / "blobs"), sink)
        server = await asyncio.get_running_loop().create_server(make_protocol(handler, settings), "127.0.0.1", 0)
        made.append((server, handler))
        port = server.sockets[0].getsockname()[1]

        async def connect() -> Client:
            return Client(*await asyncio.open_connection("127.0.0.1", port))

        return handler, connect

    yield _start
    for server, _ in made:
        server.close()
    await asyncio.sleep(0.05)


async def _greeted(connect) -> Client:
    client = await connect()
    assert (await client.reply())[-1].startswith("220 ")
    return client


async def test_an_idle_session_gets_421_at_once_and_is_closed(ingress):
    handler, connect = await ingress(MemorySink())
    client = await _greeted(connect)
    assert (await client.cmd("EHLO client.ext.test")).startswith("250 ")
    await asyncio.sleep(0.05)  # the session now waits for its next command
    handler.shut_down()
    assert await client.reply() == [GOODBYE]
    assert await client.rest() == b""


async def test_a_message_whose_data_ends_after_the_stop_is_not_persisted(ingress):
    sink = MemorySink()
    handler, connect = await ingress(sink)
    client = await _greeted(connect)
    await client.envelope()
    await client.send(MESSAGE)  # the body so far; the final dot comes after the stop
    await asyncio.sleep(0.05)
    handler.shut_down()
    assert await client.cmd(".") == GOODBYE
    assert await client.rest() == b""
    assert sink.persisted == []
    assert [r.reason_code for r in sink.rejects()] == ["shutting_down"]
    await asyncio.wait_for(handler.drained(), 1)


async def test_a_message_being_persisted_gets_its_250_then_the_session_ends(ingress):
    sink = GatedSink()
    handler, connect = await ingress(sink)
    client = await _greeted(connect)
    await client.envelope()
    await client.send(MESSAGE + b".\r\n")
    await asyncio.wait_for(sink.entered.wait(), 5)
    handler.shut_down()
    drained = asyncio.ensure_future(handler.drained())
    await asyncio.sleep(0.05)
    assert not drained.done()  # the stop waits for the commit in flight
    sink.gate.set()
    assert (await client.reply())[-1].startswith("250 2.0.0 Ok: queued as ")
    assert await client.reply() == [GOODBYE]
    assert await client.rest() == b""
    await asyncio.wait_for(drained, 1)
    assert len(sink.persisted) == 1


async def test_a_connection_after_the_stop_gets_421_instead_of_the_banner(ingress):
    handler, connect = await ingress(MemorySink())
    handler.shut_down()
    client = await connect()
    assert await client.reply() == [GOODBYE]
    assert await client.rest() == b""


async def test_a_pipelined_quit_after_the_message_is_answered_without_a_reset(ingress):
    sink = GatedSink()
    handler, connect = await ingress(sink)
    client = await _greeted(connect)
    await client.envelope()
    await client.send(MESSAGE + b".\r\nQUIT\r\n")  # the dot and QUIT in one write, as pipelining clients do
    await asyncio.wait_for(sink.entered.wait(), 5)
    handler.shut_down()
    sink.gate.set()
    assert (await client.reply())[-1].startswith("250 2.0.0 Ok: queued as ")
    assert (await client.reply())[-1].startswith("221 ")
    assert await client.rest() == b""
