"""The delivery transport: dot-stuffing, reply parsing, and LMTP/SMTP against a scripted server.

The server here is a few lines of asyncio written for the test: it answers per recipient at RCPT
and, for LMTP, once per accepted recipient after DATA (RFC 2033 4.2), and records what it got.
"""
from __future__ import annotations

import asyncio

import pytest

from consumers.sinks.transport import (
    PIPELINE_GROUP,
    Delivery,
    RefusedGreeting,
    SmtpClientTransport,
    dot_stuff,
    parse_reply_text,
)
from schemas.events import Reply
from tests.consumers.sinks.scripted_server import Script

pytestmark = pytest.mark.timeout(30)


# ---- dot-stuffing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, stuffed",
    [
        (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),
        (b"a\r\n.b\r\n", b"a\r\n..b\r\n.\r\n"),
        (b".first\r\n", b"..first\r\n.\r\n"),
        (b"x\r\n.\r\ny\r\n", b"x\r\n..\r\ny\r\n.\r\n"),  # a lone dot in the body is not the end
        (b"x\r\n.\r\n.\r\n", b"x\r\n..\r\n..\r\n.\r\n"),  # consecutive dot lines
        (b"x\r\n..two\r\n", b"x\r\n...two\r\n.\r\n"),
        (b"no final newline", b"no final newline\r\n.\r\n"),
        (b"", b"\r\n.\r\n"),
        (b"a.b\r\n", b"a.b\r\n.\r\n"),  # a dot inside a line stays
    ],
)
def test_dot_stuff(data, stuffed):
    assert dot_stuff(data) == stuffed


def _unstuff(stuffed: bytes) -> bytes:
    """What an RFC 5321 server does with the stuffed stream (to the final dot)."""
    assert stuffed.endswith(b"\r\n.\r\n") or stuffed == b".\r\n"
    lines = stuffed[:-3].split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


@pytest.mark.parametrize("data", [b"a\r\n.\r\n..\r\n.x\r\nend\r\n", b".\r\n", b"\r\n.\r\n\r\n"])
def test_dot_stuff_round_trips(data):
    assert _unstuff(dot_stuff(data)) == data


# ---- reply parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code, text, reply",
    [
        (250, "2.1.5 Ok", Reply(code=250, enhanced="2.1.5", text="Ok")),
        (550, "5.1.1 <x@school.test> User doesn't exist", Reply(code=550, enhanced="5.1.1",
                                                                 text="<x@school.test> User doesn't exist")),
        (452, "4.2.2   Mailbox full", Reply(code=452, enhanced="4.2.2", text="Mailbox full")),
        (550, "No such user", Reply(code=550, enhanced="", text="No such user")),
        (250, "2.0.0.1 odd", Reply(code=250, enhanced="", text="2.0.0.1 odd")),
        (421, "", Reply(code=421, enhanced="", text="")),
        (250, "3.1.1 wrong class digit", Reply(code=250, enhanced="", text="3.1.1 wrong class digit")),
        (451, "4.3.0 x", Reply(code=451, enhanced="4.3.0", text="x")),
    ],
)
def test_parse_reply_text(code, text, reply):
    assert parse_reply_text(code, text) == reply


def test_parse_reply_text_code_without_text():
    assert parse_reply_text(250, "2.0.0") == Reply(code=250, enhanced="2.0.0", text="")



MESSAGE = (
    b"From: alice@ext.test\r\n"
    b"Subject: Dots\r\n"
    b"\r\n"
    b".starts with a dot\r\n"
    b"middle\r\n"
    b".\r\n"
    b"..two dots\r\n"
    b"end\r\n"
)


def _transport(port: int, *, lmtp: bool = True, timeout: float = 5.0) -> SmtpClientTransport:
    return SmtpClientTransport("127.0.0.1", port, lmtp=lmtp, helo_name="mx.school.test", timeout=timeout)


async def test_lmtp_per_recipient_replies(serve):
    script = Script(
        rcpt={"nouser@school.test": "550 5.1.1 <nouser@school.test> User doesn't exist"},
        after_data={"full@school.test": "452 4.2.2 <full@school.test> Mailbox full",
                    "ok@school.test": "250 2.0.0 <ok@school.test> K2iVBbDdJWf Saved"},
    )
    server, port = await serve(script)
    recipients = ["full@school.test", "nouser@school.test", "ok@school.test"]
    replies = await _transport(port).deliver(Delivery(mail_from="alice@ext.test", recipients=recipients,
                                                      data=MESSAGE))
    assert replies == {
        "full@school.test": Reply(code=452, enhanced="4.2.2", text="<full@school.test> Mailbox full"),
        "nouser@school.test": Reply(code=550, enhanced="5.1.1", text="<nouser@school.test> User doesn't exist"),
        "ok@school.test": Reply(code=250, enhanced="2.0.0", text="<ok@school.test> K2iVBbDdJWf Saved"),
    }
    assert list(replies) == recipients
    assert server.seen.commands == [
        "LHLO mx.school.test",
        "MAIL FROM:<alice@ext.test>",
        "RCPT TO:<full@school.test>",
        "RCPT TO:<nouser@school.test>",
        "RCPT TO:<ok@school.test>",
        "DATA",
        "QUIT",
    ]
    # pipelined (RFC 2920): the envelope and DATA in one write
    assert [len(group) for group in server.seen.groups] == [1, 5, 1]
    # the server got the stuffed body, which unstuffs to the message byte for byte
    assert server.seen.data == [
        b"From: alice@ext.test\r\n"
        b"Subject: Dots\r\n"
        b"\r\n"
        b"..starts with a dot\r\n"
        b"middle\r\n"
        b"..\r\n"
        b"...two dots\r\n"
        b"end\r\n"
        b".\r\n"
    ]
    assert _unstuff(server.seen.data[0]) == MESSAGE


async def test_lmtp_reply_order_follows_rcpt_order(serve):
    """Two accepted recipients with different outcomes: swapping them must swap the replies."""
    script = Script(after_data={"a@school.test": "452 4.2.2 full", "b@school.test": "250 2.0.0 saved"})
    _, port = await serve(script)
    replies = await _transport(port).deliver(Delivery(mail_from="", recipients=["b@school.test", "a@school.test"],
                                                      data=b"x\r\n"))
    assert replies["a@school.test"].code == 452 and replies["b@school.test"].code == 250


@pytest.mark.parametrize("pipelining", [True, False])
async def test_no_data_when_every_recipient_is_refused(serve, pipelining: bool):
    script = Script(rcpt={"x@school.test": "550 5.1.1 no", "y@school.test": "450 4.2.1 later"}, pipelining=pipelining)
    server, port = await serve(script)
    replies = await _transport(port).deliver(Delivery(mail_from="a@ext.test",
                                                      recipients=["x@school.test", "y@school.test"], data=b"x\r\n"))
    assert replies == {"x@school.test": Reply(code=550, enhanced="5.1.1", text="no"),
                       "y@school.test": Reply(code=450, enhanced="4.2.1", text="later")}
    # pipelined, DATA went with the RCPTs and the server refused it; else DATA is never sent
    assert ("DATA" in server.seen.commands) is pipelining and server.seen.commands[-1] == "QUIT"
    assert server.seen.data == []


async def test_a_server_that_does_not_pipeline_gets_one_command_at_a_time(serve):
    server, port = await serve(Script(pipelining=False))
    replies = await _transport(port).deliver(Delivery(mail_from="a@ext.test", recipients=["b@school.test",
                                                                                         "c@school.test"],
                                                      data=b"x\r\n"))
    assert {r.code for r in replies.values()} == {250}
    assert [len(group) for group in server.seen.groups] == [1] * len(server.seen.commands)
    assert server.seen.commands[1:5] == ["MAIL FROM:<a@ext.test>", "RCPT TO:<b@school.test>",
                                         "RCPT TO:<c@school.test>", "DATA"]


async def test_many_recipients_are_pipelined_in_groups(serve):
    recipients = [f"s{i}@school.test" for i in range(PIPELINE_GROUP * 2 + 50)]
    script = Script(rcpt={"s7@school.test": "550 5.1.1 no"}, after_data={"s150@school.test": "452 4.2.2 full"})
    server, port = await serve(script)
    replies = await _transport(port).deliver(Delivery(mail_from="a@ext.test", recipients=recipients, data=b"x\r\n"))
    assert list(replies) == recipients
    assert replies["s7@school.test"].code == 550 and replies["s150@school.test"].code == 452
    assert sum(r.code == 250 for r in replies.values()) == len(recipients) - 2
    # MAIL, 250 RCPT and DATA: two full groups and the rest with DATA; then QUIT
    assert [len(group) for group in server.seen.groups[1:]] == [PIPELINE_GROUP, PIPELINE_GROUP, 52, 1]


async def test_a_refused_mail_applies_to_every_recipient_when_pipelined(serve):
    server, port = await serve(Script(greeting="220 lmtp.school.test LMTP ready"))
    server.script.second_mail = "452 4.3.1 insufficient system storage"
    transport = SmtpClientTransport("127.0.0.1", port, lmtp=True, helo_name="mx.school.test", timeout=5.0,
                                    reuse_seconds=30)
    await transport.deliver(Delivery(mail_from="a@ext.test", recipients=["b@school.test"], data=b"x\r\n"))
    replies = await transport.deliver(Delivery(mail_from="a@ext.test", recipients=["b@school.test", "c@school.test"],
                                               data=b"y\r\n"))
    assert replies == dict.fromkeys(["b@school.test", "c@school.test"],
                                    Reply(code=452, enhanced="4.3.1", text="insufficient system storage"))
    assert len(server.seen.data) == 1  # the second message was not sent
    await transport.close()


async def test_a_broken_server_that_takes_data_without_recipients_gets_an_empty_message(serve):
    script = Script(rcpt={"x@school.test": "550 5.1.1 no"}, data_without_recipients="354 go ahead")
    server, port = await serve(script)
    transport = SmtpClientTransport("127.0.0.1", port, lmtp=True, helo_name="mx.school.test", timeout=5.0,
                                    reuse_seconds=30)
    replies = await transport.deliver(Delivery(mail_from="a@ext.test", recipients=["x@school.test"], data=b"x\r\n"))
    assert replies == {"x@school.test": Reply(code=550, enhanced="5.1.1", text="no")}
    assert server.seen.data == [b".\r\n"]  # nothing of the message
    await transport.deliver(Delivery(mail_from="a@ext.test", recipients=["b@school.test"], data=b"x\r\n"))
    assert server.seen.connections == 2  # that session was not kept
    await transport.close()


async def test_mail_parameters(serve):
    server, port = await serve(Script())
    await _transport(port).deliver(Delivery(mail_from="", recipients=["b@school.test"], data=b"x\r\n",
                                            smtputf8=True, body_8bit=True))
    assert server.seen.commands[1] == "MAIL FROM:<> BODY=8BITMIME SMTPUTF8"


async def test_smtp_mode_one_reply_for_all(serve):
    script = Script(rcpt={"n@ext.test": "550 5.7.1 relay"}, final="250 2.0.0 Ok: queued as ABC",
                    greeting="220 smarthost.school.test ESMTP")
    server, port = await serve(script)
    replies = await _transport(port, lmtp=False).deliver(
        Delivery(mail_from="a@school.test", recipients=["r@ext.test", "n@ext.test", "s@ext.test"], data=MESSAGE))
    queued = Reply(code=250, enhanced="2.0.0", text="Ok: queued as ABC")
    assert replies == {"r@ext.test": queued, "n@ext.test": Reply(code=550, enhanced="5.7.1", text="relay"),
                       "s@ext.test": queued}
    assert server.seen.commands[0] == "EHLO mx.school.test"
    assert _unstuff(server.seen.data[0]) == MESSAGE


async def test_refusing_greeting_applies_to_every_recipient(serve):
    _, port = await serve(Script(greeting="554 5.3.2 not accepting mail"))
    replies = await _transport(port).deliver(Delivery(mail_from="a@ext.test", recipients=["b@school.test",
                                                                                         "c@school.test"],
                                                      data=b"x\r\n"))
    assert replies == dict.fromkeys(["b@school.test", "c@school.test"],
                                    Reply(code=554, enhanced="5.3.2", text="not accepting mail"))


async def test_a_refusing_greeting_raises_for_a_caller_with_other_hosts_and_is_answered_with_quit(serve):
    server, port = await serve(Script(greeting="421 4.7.0 mx1.outside.test too busy"))
    transport = SmtpClientTransport("127.0.0.1", port, lmtp=False, helo_name="mx.school.test", timeout=5.0,
                                    skip_refusing_greeting=True)
    with pytest.raises(RefusedGreeting) as refused:
        await transport.deliver(Delivery(mail_from="a@ext.test", recipients=["b@outside.test"], data=b"x\r\n"))
    assert refused.value.reply == Reply(code=421, enhanced="4.7.0", text="mx1.outside.test too busy")
    assert str(refused.value) == "421 4.7.0 mx1.outside.test too busy"
    assert server.seen.commands == ["QUIT"] and server.seen.data == []


async def test_connection_refused_raises_oserror():
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(OSError):
        await _transport(port).deliver(Delivery(mail_from="", recipients=["b@school.test"], data=b"x\r\n"))


async def test_server_hanging_up_mid_session_raises_connection_error():
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 hi\r\n")
        await reader.readline()  # LHLO
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ConnectionError):
            await _transport(port).deliver(Delivery(mail_from="", recipients=["b@school.test"], data=b"x\r\n"))
    finally:
        server.close()
        await server.wait_closed()


async def test_silent_server_times_out():
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never greets

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(asyncio.TimeoutError):
            await _transport(port, timeout=0.3).deliver(Delivery(mail_from="", recipients=["b@school.test"],
                                                                 data=b"x\r\n"))
    finally:
        server.close()
        await server.wait_closed()
