"""The real ingress SMTP protocol on a loopback port, spoken to with raw bytes.

smtplib normalises line endings, so the client here writes bytes as given: that is the only way to
send the bare LF / bare CR sequences of SMTP smuggling (CVE-2023-51766). The event sink is an
in-memory implementation of `ingress.handler.EventSink`; the blob store is the real file store.
"""
from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from ingress.handler import IngressHandler
from ingress.server import make_protocol
from pipeline.blobstore import FileBlobStore
from pipeline.settings import ConfigError, IngressSettings
from schemas.events import Event, Received, SmtpConnect, SmtpReject

pytestmark = pytest.mark.timeout(30)
IO_TIMEOUT = 5.0


class MemorySink:
    """EventSink that keeps what it is given."""

    def __init__(self) -> None:
        self.persisted: list[Received] = []
        self.notified: list[Event] = []

    async def persist(self, event: Received, stored: Awaitable[None]) -> None:
        await stored  # the blob first, as the Kafka sink: never an event before its blob
        self.persisted.append(event)

    def notify(self, event: Event) -> None:
        self.notified.append(event)

    def rejects(self) -> list[SmtpReject]:
        return [e for e in self.notified if isinstance(e, SmtpReject)]


class BrokerDownSink(MemorySink):
    """The broker is unreachable: persist fails the way the Kafka client does."""

    async def persist(self, event: Received, stored: Awaitable[None]) -> None:
        raise ConnectionError("KafkaConnectionError: kafka-internal-7.example:9092 unreachable")


class Client:
    """A raw SMTP client: bytes out exactly as given, replies parsed line by line."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def reply(self) -> list[str]:
        """One complete (possibly multi-line) reply, as text lines without CRLF."""
        lines = []
        while True:
            raw = await asyncio.wait_for(self.reader.readline(), IO_TIMEOUT)
            assert raw, f"connection closed; reply so far {lines}"
            assert raw.endswith(b"\r\n"), raw
            line = raw[:-2].decode()
            lines.append(line)
            if len(line) < 4 or line[3] == " ":
                return lines

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def cmd(self, line: str | bytes) -> str:
        """Send a CRLF-terminated command; return the last line of the reply."""
        data = line.encode() if isinstance(line, str) else line
        await self.send(data + b"\r\n")
        return (await self.reply())[-1]

    async def rest(self) -> bytes:
        """Everything the server still sends until it closes the connection."""
        return await asyncio.wait_for(self.reader.read(), IO_TIMEOUT)

    async def envelope(self, rcpt: str = "bob@school.test", mail_from: str = "alice@ext.test") -> None:
        assert (await self.cmd("EHLO client.ext.test")).startswith("250 ")
        assert (await self.cmd(f"MAIL FROM:<{mail_from}>")).startswith("250 2.1.0")
        assert (await self.cmd(f"RCPT TO:<{rcpt}>")).startswith("250 2.1.5")
        assert (await self.cmd("DATA")).startswith("354 ")

    def close(self) -> None:
        self.writer.close()


Start = Callable[..., Awaitable[tuple[MemorySink, FileBlobStore, Callable[[], Awaitable[Client]]]]]


@pytest.fixture
async def start(tmp_path) -> AsyncIterator[Start]:
    """start(sink=None, **ingress settings) -> (sink, blobs, connect)."""
    servers: list[asyncio.AbstractServer] = []
    clients: list[Client] = []

    async def _start(sink: MemorySink | None = None, **ingress: object):
        sink = sink if sink is not None else MemorySink()
        settings = IngressSettings(**ingress)  # type: ignore[arg-type]
        blobs = FileBlobStore(tmp_path / "blobs")
        handler = IngressHandler(settings, blobs, sink)
        server = await asyncio.get_running_loop().create_server(make_protocol(handler, settings), host="127.0.0.1",
                                                                port=0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]

        async def connect() -> Client:
            client = Client(*await asyncio.open_connection("127.0.0.1", port))
            clients.append(client)
            greeting = await client.reply()
            assert greeting == ["220 mx.school.test poststelle"]  # no enhanced code in the greeting
            return client

        return sink, blobs, connect

    yield _start
    for client in clients:
        client.close()
    for server in servers:
        server.close()
        await server.wait_closed()
    await asyncio.sleep(0.05)  # let the protocol tasks see the closed connections


MESSAGE = (
    b"From: Alice <alice@ext.test>\r\n"
    b"To: bob@school.test\r\n"
    b"Subject: Klassenfahrt\r\n"
    b"Message-ID: <m1@ext.test>\r\n"
    b"\r\n"
    b"Hallo Bob,\r\n"
    b".a line that starts with a dot\r\n"
    b"bis bald\r\n"
)


def _stuffed(body: bytes) -> bytes:
    return body.replace(b"\r\n.", b"\r\n..") + b".\r\n"


# ---- a clean session ----------------------------------------------------------------------------


async def test_ehlo_advertises_the_extensions(start):
    _, _, connect = await start()
    client = await connect()
    await client.send(b"EHLO client.ext.test\r\n")
    lines = await client.reply()
    assert lines[0] == "250-mx.school.test"  # no enhanced codes in the EHLO reply (RFC 2034 3)
    keywords = {line[4:].split()[0] for line in lines[1:]}
    assert {"SIZE", "8BITMIME", "PIPELINING", "SMTPUTF8", "ENHANCEDSTATUSCODES"} <= keywords
    assert f"250-SIZE {IngressSettings().max_message_size}" in lines
    assert all(line.startswith("250-") for line in lines[:-1]) and lines[-1].startswith("250 ")


async def test_a_multi_line_reply_leaves_in_one_write(tmp_path):
    """The EHLO reply is one write (one TCP segment), not one per line; single-line replies too."""
    settings = IngressSettings()
    handler = IngressHandler(settings, FileBlobStore(tmp_path / "blobs"), MemorySink())
    server = await asyncio.get_running_loop().create_server(make_protocol(handler, settings), "127.0.0.1", 0)
    client = Client(*await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1]))
    try:
        assert await client.reply() == ["220 mx.school.test poststelle"]
        (session,) = handler._sessions
        writes: list[bytes] = []
        write = session._writer.write  # the transport swapped for a recording one; the protocol is real
        session._writer.write = lambda data: (writes.append(data), write(data))[1]
        await client.send(b"EHLO client.ext.test\r\n")
        lines = await client.reply()
        assert len(lines) >= 6 and writes == [("\r\n".join(lines) + "\r\n").encode()]
        assert await client.cmd("MAIL FROM:<alice@ext.test>") == "250 2.1.0 Sender OK"
        assert len(writes) == 2 and writes[1] == b"250 2.1.0 Sender OK\r\n"
    finally:
        client.close()
        server.close()
        await server.wait_closed()


async def test_clean_message_is_queued_with_one_received_event(start):
    sink, blobs, connect = await start()
    client = await connect()
    await client.envelope()
    await client.send(_stuffed(MESSAGE))
    reply = (await client.reply())[-1]
    match = re.fullmatch(r"250 2\.0\.0 Ok: queued as (\S+)", reply)
    assert match, reply
    assert len(sink.persisted) == 1
    event = sink.persisted[0]
    assert event.message_id == match.group(1)
    assert event.envelope.mail_from == "alice@ext.test"
    assert event.envelope.rcpt_to == ["bob@school.test"]
    assert event.client.ip == "127.0.0.1" and event.client.helo == "client.ext.test"
    assert event.headers.subject == "Klassenfahrt"
    assert event.headers.message_id_header == "<m1@ext.test>"
    assert event.ingress_host == "mx.school.test"
    raw = blobs.get(event.blob)
    assert event.blob.size == len(raw)
    assert raw.startswith(b"Received: from client.ext.test (unknown [127.0.0.1])\r\n")
    assert raw.endswith(MESSAGE)  # dot-unstuffed, byte for byte
    trace = raw[: -len(MESSAGE)]
    assert f"with ESMTP id {event.message_id}".encode() in trace
    assert b"for <bob@school.test>" in trace
    connects = [e for e in sink.notified if isinstance(e, SmtpConnect)]
    assert len(connects) == 1 and connects[0].session_id == event.session_id
    assert sink.rejects() == []
    assert await client.cmd("QUIT") == "221 2.0.0 Bye"


async def test_two_messages_in_one_session(start):
    sink, _, connect = await start()
    client = await connect()
    await client.envelope()
    await client.send(_stuffed(MESSAGE))
    assert (await client.reply())[-1].startswith("250 2.0.0 Ok: queued as ")
    assert (await client.cmd("MAIL FROM:<carol@ext.test>")).startswith("250 2.1.0")
    assert (await client.cmd("RCPT TO:<carol@School.Test>")).startswith("250 2.1.5")
    assert (await client.cmd("DATA")).startswith("354 ")
    await client.send(_stuffed(b"Subject: second\r\n\r\nx\r\n"))
    assert (await client.reply())[-1].startswith("250 2.0.0 Ok: queued as ")
    assert [e.envelope.mail_from for e in sink.persisted] == ["alice@ext.test", "carol@ext.test"]
    assert sink.persisted[1].envelope.rcpt_to == ["carol@school.test"]  # domain lower-cased
    assert len({e.message_id for e in sink.persisted}) == 2


async def test_null_sender_is_recorded_as_empty(start):
    sink, _, connect = await start()
    client = await connect()
    await client.envelope(mail_from="")
    await client.send(_stuffed(b"Subject: Undelivered Mail Returned to Sender\r\n\r\nx\r\n"))
    assert (await client.reply())[-1].startswith("250 2.0.0 Ok: queued as ")
    assert [e.envelope.mail_from for e in sink.persisted] == [""]


async def test_unknown_command_gets_an_enhanced_code(start):
    _, _, connect = await start()
    client = await connect()
    assert (await client.cmd("FROB x")).startswith("500 5.5.2 ")
    assert (await client.cmd("DATA")).startswith("503 5.5.1 ")  # no EHLO/HELO yet (or no RCPT)


# ---- line endings and smuggling -----------------------------------------------------------------


@pytest.mark.parametrize("line", [b"EHLO client.ext.test\n", b"EHLO client\r.ext.test\r\n", b"NOOP\r\r\n"])
async def test_bare_line_ending_in_a_command_closes_the_connection(start, line):
    _, _, connect = await start()
    client = await connect()
    await client.send(line)
    reply = await client.reply()
    assert reply == ["521 5.5.2 Error: bare <CR> or <LF> received (see RFC 5321 2.3.8); closing connection"]
    assert await client.rest() == b""  # closed, nothing more


async def test_bare_lf_command_after_ehlo(start):
    sink, _, connect = await start()
    client = await connect()
    assert (await client.cmd("EHLO client.ext.test")).startswith("250 ")
    await client.send(b"MAIL FROM:<alice@ext.test>\n")
    assert (await client.reply())[-1].startswith("521 5.5.2 ")
    assert await client.rest() == b""
    assert sink.persisted == []


SMUGGLED = (
    b"MAIL FROM:<admin@school.test>\r\n"
    b"RCPT TO:<bob@school.test>\r\n"
    b"DATA\r\n"
    b"From: admin@school.test\r\n"
    b"Subject: smuggled\r\n"
    b"\r\n"
    b"evil\r\n"
)


@pytest.mark.parametrize(
    "end_of_data",
    [b"\n.\r\n", b"\r.\r", b"\n.\n", b"\r\n.\n", b"\r.\r\n", b"\n.\r"],
    ids=["LF.CRLF", "CR.CR", "LF.LF", "CRLF.LF", "CR.CRLF", "LF.CR"],
)
async def test_smuggling_is_refused_and_nothing_is_accepted(start, end_of_data):
    sink, _, connect = await start()
    client = await connect()
    await client.envelope()
    await client.send(b"Subject: hi\r\n\r\nfirst part" + end_of_data + SMUGGLED + b".\r\n")
    reply = await client.reply()
    assert len(reply) == 1 and reply[0].startswith("521 5.5.2 "), reply
    assert await client.rest() == b""  # no reply to the smuggled commands: the connection is gone
    assert sink.persisted == []  # no message at all, never two
    rejects = sink.rejects()
    assert len(rejects) == 1
    assert (rejects[0].phase, rejects[0].check, rejects[0].reason_code) == ("data", "smuggling",
                                                                            "illegal_line_ending")
    assert (rejects[0].reply.code, rejects[0].reply.enhanced) == (521, "5.5.2")
    assert rejects[0].sender == "alice@ext.test"


async def test_nul_byte_in_data_is_refused(start):
    sink, _, connect = await start()
    client = await connect()
    await client.envelope()
    await client.send(b"Subject: nul\r\n\r\nbefore\x00after\r\n.\r\n")
    reply = await client.reply()
    assert reply[0].startswith("521 5.6.0 "), reply
    assert await client.rest() == b""
    assert sink.persisted == []
    assert [r.reason_code for r in sink.rejects()] == ["illegal_line_ending"]


async def test_nul_byte_in_a_command_is_refused(start):
    _, _, connect = await start()
    client = await connect()
    await client.send(b"EHLO a\x00b\r\n")
    assert (await client.reply())[0].startswith("521 5.6.0 ")
    assert await client.rest() == b""


# ---- recipients ---------------------------------------------------------------------------------


@pytest.mark.parametrize("rcpt", ["r@ext.test", "r@[127.0.0.1]", "r@school.test.ext.test"])
async def test_relay_is_denied(start, rcpt):
    sink, _, connect = await start()
    client = await connect()
    assert (await client.cmd("EHLO client.ext.test")).startswith("250 ")
    assert (await client.cmd("MAIL FROM:<alice@ext.test>")).startswith("250 ")
    reply = await client.cmd(f"RCPT TO:<{rcpt}>")
    assert reply.startswith("554 5.7.1 "), reply
    assert (await client.cmd("DATA")).startswith("503 5.5.1 ")  # no accepted recipient
    (reject,) = sink.rejects()
    assert (reject.phase, reject.check, reject.reason_code) == ("rcpt", "relay", "relay_denied")
    assert reject.recipient == rcpt and reject.sender == "alice@ext.test" and reject.helo == "client.ext.test"
    assert (reject.reply.code, reject.reply.enhanced) == (554, "5.7.1")
    assert sink.persisted == []


@pytest.mark.parametrize(
    "rcpt, reply_prefix, reason_code",
    [
        ("r%ext.test@school.test", "554 5.7.1 ", "relay_routing_form"),  # the relay check refuses it
        ("ext.test!r@school.test", "554 5.7.1 ", "relay_routing_form"),
        ('"r@ext.test"@school.test', "554 5.7.1 ", "relay_routing_form"),
        ("r@ext.test@school.test", "554 5.7.1 ", "relay_routing_form"),  # a route to aiosmtpd's parser too
        ("r@@school.test", "553 5.1.3 ", None),  # not even a route: aiosmtpd's parser refuses it
    ],
)
async def test_routing_tricks_are_refused(start, rcpt, reply_prefix, reason_code):
    sink, _, connect = await start()
    client = await connect()
    assert (await client.cmd("EHLO client.ext.test")).startswith("250 ")
    assert (await client.cmd("MAIL FROM:<alice@ext.test>")).startswith("250 ")
    reply = await client.cmd(f"RCPT TO:<{rcpt}>")
    assert reply.startswith(reply_prefix), reply
    assert (await client.cmd("DATA")).startswith("503 5.5.1 ")  # nothing was accepted
    assert [r.reason_code for r in sink.rejects()] == ([reason_code] if reason_code else [])


async def test_source_route_is_not_accepted_as_local(start):
    _, _, connect = await start()
    client = await connect()
    assert (await client.cmd("EHLO client.ext.test")).startswith("250 ")
    assert (await client.cmd("MAIL FROM:<alice@ext.test>")).startswith("250 ")
    reply = await client.cmd("RCPT TO:<@school.test:r@ext.test>")
    assert reply.startswith("5"), reply


# ---- persistence failure ------------------------------------------------------------------------


async def test_broker_outage_answers_451_without_details(start):
    sink, _, connect = await start(sink=BrokerDownSink())
    client = await connect()
    await client.envelope()
    await client.send(_stuffed(MESSAGE))
    reply = await client.reply()
    assert len(reply) == 1
    assert reply[0].startswith("451 4.3.0 "), reply
    for leak in ("ConnectionError", "Kafka", "kafka-internal", "9092", "unreachable", "Traceback"):
        assert leak not in reply[0]
    assert sink.persisted == []
    (reject,) = sink.rejects()
    assert (reject.check, reject.reason_code, reject.reply.code) == ("persist", "persist_failed", 451)
    # the session goes on: the client may retry or leave
    assert await client.cmd("NOOP") == "250 2.0.0 OK"
    assert await client.cmd("QUIT") == "221 2.0.0 Bye"


async def test_persist_timeout_answers_451(start):
    class SlowSink(MemorySink):
        async def persist(self, event: Received, stored: Awaitable[None]) -> None:
            await asyncio.sleep(10)

    sink, _, connect = await start(sink=SlowSink(), persist_timeout=0.2)
    client = await connect()
    await client.envelope()
    await client.send(_stuffed(MESSAGE))
    assert (await client.reply())[0].startswith("451 4.3.0 ")
    assert [r.reason_code for r in sink.rejects()] == ["persist_failed"]


# ---- size ---------------------------------------------------------------------------------------


async def test_size_limit(start):
    sink, _, connect = await start(max_message_size=1000)
    client = await connect()
    await client.send(b"EHLO client.ext.test\r\n")
    assert "250-SIZE 1000" in await client.reply()
    # declared too large at MAIL
    reply = await client.cmd("MAIL FROM:<alice@ext.test> SIZE=5000")
    assert reply.startswith("552 5.3.4 "), reply
    # not declared, but too large when sent
    assert (await client.cmd("MAIL FROM:<alice@ext.test>")).startswith("250 ")
    assert (await client.cmd("RCPT TO:<bob@school.test>")).startswith("250 ")
    assert (await client.cmd("DATA")).startswith("354 ")
    await client.send(_stuffed(b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 30))
    reply = (await client.reply())[-1]
    assert reply.startswith("552 5.3.4 "), reply
    assert sink.persisted == []
    # a message within the limit still goes through afterwards
    assert (await client.cmd("MAIL FROM:<alice@ext.test> SIZE=200")).startswith("250 ")
    assert (await client.cmd("RCPT TO:<bob@school.test>")).startswith("250 ")
    assert (await client.cmd("DATA")).startswith("354 ")
    await client.send(_stuffed(b"Subject: small\r\n\r\nok\r\n"))
    assert (await client.reply())[-1].startswith("250 2.0.0 Ok: queued as ")
    assert len(sink.persisted) == 1


async def test_oversized_smuggling_attempt_is_refused_and_ends_the_session(start):
    """Refused for its size by aiosmtpd itself, a message with bare line endings still ends the session."""
    sink, _, connect = await start(max_message_size=200)
    client = await connect()
    await client.envelope()
    await client.send(b"Subject: big\r\n\r\n" + b"y" * 300 + b"\n.\r\n" + SMUGGLED + b".\r\n")
    reply = (await client.reply())[-1]
    assert reply.startswith("552 5.3.4"), reply
    assert sink.persisted == []
    assert await client.reader.read() == b"", "the connection is closed after the reply"


async def test_oversized_clean_message_leaves_the_session_usable(start):
    """A message refused for its size must not taint the next transaction of the session."""
    sink, _, connect = await start(max_message_size=200)
    client = await connect()
    await client.envelope()
    await client.send(_stuffed(b"Subject: big\r\n\r\n" + b"y" * 300 + b"\r\n"))
    assert (await client.reply())[-1].startswith("552 5.3.4")
    assert (await client.cmd("MAIL FROM:<alice@ext.test>")).startswith("250 ")
    assert (await client.cmd("RCPT TO:<bob@school.test>")).startswith("250 ")
    assert (await client.cmd("DATA")).startswith("354 ")
    await client.send(_stuffed(b"Subject: clean\r\n\r\nok\r\n"))
    assert (await client.reply())[-1].startswith("250 2.0.0 Ok: queued as ")
    assert len(sink.persisted) == 1


# ---- mail loops -----------------------------------------------------------------------------------


def _hops(count: int) -> bytes:
    """A message that passed `count` MTAs (a Received field each, newest first)."""
    return b"".join(b"Received: from relay%d.ext.test by relay%d.ext.test; Mon, 1 Jan 2024 10:00:00 +0000\r\n"
                    % (i + 1, i) for i in reversed(range(count))) + MESSAGE


async def test_a_message_over_the_hop_limit_is_a_mail_loop_refused_at_data(start):
    sink, _, connect = await start(max_received_headers=5)
    client = await connect()
    await client.envelope()
    await client.send(_stuffed(_hops(5)))  # at the limit: taken (ours makes it 6 on the way on)
    assert (await client.reply())[-1].startswith("250 2.0.0 Ok: queued as ")
    assert (await client.cmd("MAIL FROM:<alice@ext.test>")).startswith("250 2.1.0")
    assert (await client.cmd("RCPT TO:<bob@school.test>")).startswith("250 2.1.5")
    assert (await client.cmd("DATA")).startswith("354 ")
    await client.send(_stuffed(_hops(6)))
    assert await client.reply() == ["554 5.4.6 Too many hops: mail loop suspected"]
    assert len(sink.persisted) == 1  # only the first
    (reject,) = sink.rejects()
    assert (reject.phase, reject.check, reject.reason_code) == ("data", "hops", "too_many_hops")
    assert (reject.reply.code, reject.reply.enhanced) == (554, "5.4.6")
    assert await client.cmd("QUIT") == "221 2.0.0 Bye"  # the session goes on


async def test_the_default_hop_limit_is_postfixs_50_and_cannot_be_turned_off():
    assert IngressSettings().max_received_headers == 50
    with pytest.raises(ConfigError, match="ingress.max_received_headers"):
        IngressSettings(max_received_headers=0)
