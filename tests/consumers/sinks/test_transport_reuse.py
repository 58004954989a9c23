"""Connection reuse of the LMTP/SMTP client transport (Postfix's connection cache), against a scripted server."""
from __future__ import annotations

import asyncio

import pytest

from consumers.sinks.transport import Delivery, SmtpClientTransport
from tests.consumers.sinks.scripted_server import Script

pytestmark = pytest.mark.timeout(30)


def _reusing(port: int, reuse_seconds: float = 5.0, *, lmtp: bool = True) -> SmtpClientTransport:
    return SmtpClientTransport("127.0.0.1", port, lmtp=lmtp, helo_name="mx.school.test", timeout=5.0,
                               reuse_seconds=reuse_seconds)


def _mail(n: int, to: str = "max@school.test") -> Delivery:
    return Delivery(mail_from="a@ext.test", recipients=[to], data=f"Subject: {n}\r\n\r\nbody {n}\r\n".encode())


def _verbs(commands: list[str]) -> list[str]:
    return [c.split(" ", 1)[0].split(":", 1)[0] for c in commands]


@pytest.mark.parametrize("lmtp", [True, False])
async def test_a_kept_connection_carries_the_next_delivery(serve, lmtp):
    server, port = await serve(Script())
    transport = _reusing(port, lmtp=lmtp)
    for n in range(3):
        replies = await transport.deliver(_mail(n))
        assert replies["max@school.test"].code == 250
    assert server.seen.connections == 1
    hello = "LHLO" if lmtp else "EHLO"
    assert _verbs(server.seen.commands) == [hello] + ["MAIL", "RCPT", "DATA"] * 3  # no QUIT, no second hello
    assert [b"body %d" % n in d for n, d in enumerate(server.seen.data)] == [True] * 3
    await transport.close()
    await asyncio.sleep(0.05)
    assert server.seen.commands[-1] == "QUIT"


async def test_without_reuse_every_delivery_has_its_own_connection(serve):
    server, port = await serve(Script())
    transport = SmtpClientTransport("127.0.0.1", port, lmtp=True, helo_name="mx.school.test", timeout=5.0)
    for n in range(2):
        await transport.deliver(_mail(n))
    assert server.seen.connections == 2
    assert _verbs(server.seen.commands) == ["LHLO", "MAIL", "RCPT", "DATA", "QUIT"] * 2


async def test_an_unused_connection_is_closed_with_quit_after_reuse_seconds(serve):
    server, port = await serve(Script())
    transport = _reusing(port, reuse_seconds=0.2)
    await transport.deliver(_mail(1))
    await asyncio.sleep(0.5)
    assert server.seen.commands[-1] == "QUIT"
    await transport.deliver(_mail(2))
    assert server.seen.connections == 2
    await transport.close()


async def test_a_kept_connection_the_server_closed_is_replaced_and_the_mail_delivered_once(serve):
    server, port = await serve(Script(transactions_per_connection=1))
    transport = _reusing(port)
    for n in range(3):
        replies = await transport.deliver(_mail(n))
        assert replies["max@school.test"].code == 250
    assert server.seen.connections == 3
    assert len(server.seen.data) == 3  # each message once
    await transport.close()


async def test_a_421_at_the_reused_mail_means_a_new_connection(serve):
    server, port = await serve(Script(second_mail="421 4.4.2 lmtp.school.test Idle timeout, closing"))
    transport = _reusing(port)
    for n in range(2):
        replies = await transport.deliver(_mail(n))
        assert replies["max@school.test"].code == 250
    assert server.seen.connections == 2
    assert len(server.seen.data) == 2
    await transport.close()


async def test_a_transaction_without_data_is_not_kept(serve):
    server, port = await serve(Script(rcpt={"nobody@school.test": "550 5.1.1 User unknown"}))
    transport = _reusing(port)
    replies = await transport.deliver(_mail(1, to="nobody@school.test"))
    assert replies["nobody@school.test"].code == 550
    assert _verbs(server.seen.commands) == ["LHLO", "MAIL", "RCPT", "DATA", "QUIT"]  # DATA refused: 554
    await transport.deliver(_mail(2))
    assert server.seen.connections == 2
    await transport.close()


@pytest.mark.parametrize("pipelining", [False, True])
async def test_a_failure_after_mail_on_a_reused_connection_is_not_retried(pipelining: bool):
    """Once MAIL was accepted the delivery may have happened: the error goes to the sink (deferred), no resend."""
    sessions = 0

    async def dies_in_data(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sessions
        sessions += 1
        writer.write(b"220 hi\r\n")
        transactions = 0
        while line := await reader.readline():
            verb = line.strip().split(b" ", 1)[0].split(b":", 1)[0].upper()
            if verb == b"LHLO":
                writer.write(b"250-hi\r\n250 PIPELINING\r\n" if pipelining else b"250 hi\r\n")
            elif verb in (b"MAIL", b"RCPT"):
                writer.write(b"250 ok\r\n")
            elif verb == b"DATA":
                if transactions == 1:
                    writer.close()  # the second transaction dies in DATA
                    return
                writer.write(b"354 go\r\n")
                await writer.drain()
                while await reader.readline() != b".\r\n":
                    pass
                writer.write(b"250 2.0.0 saved\r\n")
                transactions += 1
            await writer.drain()

    server = await asyncio.start_server(dies_in_data, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        transport = _reusing(port)
        await transport.deliver(_mail(1))
        with pytest.raises(ConnectionError):
            await transport.deliver(_mail(2))
        assert sessions == 1
    finally:
        server.close()
        await server.wait_closed()
