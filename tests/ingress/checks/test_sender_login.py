"""The sender_login check: envelope sender and From header must belong to the logged-in user."""
from __future__ import annotations

import pytest

from ingress.checks import PASS, CheckContext, CheckServices
from ingress.checks.sender_login import AUTH_REQUIRED, FROM_UNREADABLE, SenderLoginCheck, SenderLoginSettings
from pipeline.clients.directory import Directory
from pipeline.mail.headers import parse_header

ANNA = frozenset({"anna.schmidt@school.test", "sekretariat@school.test"})
NOT_OWNED_BY_ANNA = "553 5.7.1 Sender address rejected: not owned by user anna.schmidt"


def check(**settings) -> SenderLoginCheck:
    return SenderLoginCheck(SenderLoginSettings(**settings), CheckServices(local_domains=frozenset({"school.test"})))


def anna(sender: str | None = "anna.schmidt@school.test") -> CheckContext:
    return CheckContext(session_id="s", client_ip="192.0.2.20", listener="submission",
                        authenticated_as="anna.schmidt", auth_addresses=ANNA, sender=sender)


def message(*headers: str) -> bytes:
    return ("\r\n".join(headers) + "\r\nSubject: Elternabend\r\n\r\nHallo\r\n").encode("utf-8")


# ---- MAIL ---------------------------------------------------------------------------------------------


async def test_submission_without_auth_is_530() -> None:
    ctx = CheckContext(session_id="s", client_ip="192.0.2.20", listener="submission")
    decision = await check().mail(ctx, "anna.schmidt@school.test")
    assert (decision.reply, decision.reason_code) == (AUTH_REQUIRED, "auth_required")
    assert decision.reply == "530 5.7.0 Authentication required"


async def test_mx_without_auth_passes() -> None:
    ctx = CheckContext(session_id="s", client_ip="198.51.100.7", listener="mx")
    assert await check().mail(ctx, "anna.schmidt@school.test") == PASS
    assert await check().data(ctx, message("From: someone@example.org")) == PASS


@pytest.mark.parametrize("sender", ["anna.schmidt@school.test", "sekretariat@school.test", "Anna.Schmidt@School.TEST"])
async def test_own_addresses_and_aliases_pass(sender: str) -> None:
    assert await check().mail(anna(sender), sender) == PASS


@pytest.mark.parametrize("sender", ["max.mustermann@school.test", "anna.schmidt@example.org",
                                    "anna.schmidt@school.test.example.org", "staff@school.test"])
async def test_foreign_envelope_sender_is_553(sender: str) -> None:
    decision = await check().mail(anna(sender), sender)
    assert decision.reply == NOT_OWNED_BY_ANNA
    assert decision.reason_code == "sender_not_owned"
    assert sender in decision.detail


async def test_null_sender_from_an_authenticated_user_is_refused() -> None:
    decision = await check().mail(anna(""), "")
    assert (decision.reply, decision.reason_code) == (NOT_OWNED_BY_ANNA, "sender_not_owned")


async def test_owned_addresses_from_a_real_login(directory: Directory) -> None:
    account = await directory.authenticate("anna.schmidt", "Anna2026!")
    ctx = CheckContext(session_id="s", client_ip="192.0.2.20", listener="submission",
                       authenticated_as=account.uid, auth_addresses=account.addresses)
    assert await check().mail(ctx, "sekretariat@school.test") == PASS
    assert (await check().mail(ctx, "max.mustermann@school.test")).reply == NOT_OWNED_BY_ANNA


# ---- DATA: the From header ----------------------------------------------------------------------------


@pytest.mark.parametrize("header", [
    "From: anna.schmidt@school.test",
    "From: Anna Schmidt <anna.schmidt@school.test>",
    "From: =?utf-8?q?Anna_Schmidt_=28Sekretariat=29?= <sekretariat@school.test>",
    "From: Sekretariat <SEKRETARIAT@School.Test>",
    "From: anna.schmidt@school.test, Sekretariat <sekretariat@school.test>",
    "From: \"Schmidt, Anna\" <anna.schmidt@school.test>",
    "From: Grüße <anna.schmidt@school.test>",  # raw UTF-8 in the display name
    "From: Dr. Anna Schmidt <anna.schmidt@school.test>",  # obsolete syntax (a period in the name)
    "From: Kollegium: anna.schmidt@school.test, sekretariat@school.test;",  # a group, every member owned
])
async def test_owned_from_passes(header: str) -> None:
    assert await check().data(anna(), message(header)) == PASS


@pytest.mark.parametrize("headers", [
    ("From: max.mustermann@school.test",),
    ("From: anna.schmidt@school.test, max.mustermann@school.test",),  # one of several is foreign
    ("From: anna.schmidt@school.test", "From: max.mustermann@school.test"),  # a second From header
    ("From: \"anna.schmidt@school.test\" <max.mustermann@school.test>",),  # the name looks owned
    ("From: =?utf-8?q?anna.schmidt=40school.test?= <max.mustermann@school.test>",),
    ("From: \"max.mustermann@school.test\"@school.test",),
    ("From: Kollegium: anna.schmidt@school.test, max.mustermann@school.test;",),
])
async def test_foreign_from_is_553(headers: tuple[str, ...]) -> None:
    decision = await check().data(anna(), message(*headers))
    assert (decision.reply, decision.reason_code) == (NOT_OWNED_BY_ANNA, "sender_not_owned")


@pytest.mark.parametrize("headers", [
    ("To: max.mustermann@school.test",),  # no From at all
    ("From: undisclosed-sender:;",),
    ("From: <>",),
    ("From: =?utf-8?b?YW5uYS5zY2htaWR0QHNjaG9vbC50ZXN0?=",),  # an address hidden in an encoded word
    ("From: anna.schmidt@school.test (Anna) <max.mustermann@school.test>",),  # which one is it?
    ("From: anna.schmidt@school.test\r\n\tmax.mustermann@school.test",),
    ("From: garbage <<<",),
])
async def test_missing_or_unreadable_from_is_refused(headers: tuple[str, ...]) -> None:
    decision = await check().data(anna(), message(*headers))
    assert decision.reply == FROM_UNREADABLE
    assert decision.reply.startswith("553 5.7.1 ")
    assert decision.reason_code == "header_from_invalid"


async def test_from_check_can_be_switched_off() -> None:
    assert await check(check_header_from=False).data(anna(), message("From: max.mustermann@school.test")) == PASS
    # the envelope is still checked
    assert (await check(check_header_from=False).mail(anna("x@example.org"), "x@example.org")).refused


def test_the_from_addresses_the_check_compares() -> None:
    def addresses(raw: bytes) -> tuple[str, ...]:
        authors = parse_header(raw).authors
        return authors.addresses if authors.readable else ()

    assert addresses(message("From: A <a@x.example>, b@y.example")) == ("a@x.example", "b@y.example")
    assert addresses(message("From: a@x.example", "From: c@z.example")) == ("a@x.example", "c@z.example")
    assert addresses(b"Subject: none\r\n\r\nbody\r\n") == ()
    # only the header section is read: a From line in the body is body
    assert addresses(b"Subject: s\r\n\r\nFrom: a@x.example\r\n") == ()


async def test_the_transaction_parses_the_header_once_for_every_check() -> None:
    ctx, raw = anna(), message("From: max.mustermann@school.test")
    decision = await check().data(ctx, raw)
    assert decision.reason_code == "sender_not_owned"
    assert ctx.message_header(raw) is ctx.message_header(raw)  # cached for the header summary
    ctx.reset_transaction()
    again = message("From: anna.schmidt@school.test")
    assert ctx.message_header(again).authors.addresses == ("anna.schmidt@school.test",)


async def test_the_refusal_detail_says_what_is_unreadable() -> None:
    decision = await check().data(anna(), message("From: anna.schmidt@school.test max.mustermann@school.test"))
    assert decision.reason_code == "header_from_invalid"
    assert "From field 1: invalid address in address-list" in decision.detail


async def test_odd_login_names_stay_out_of_the_reply() -> None:
    ctx = CheckContext(session_id="s", client_ip="192.0.2.20", listener="submission",
                       authenticated_as="anna\r\n250 ok", auth_addresses=ANNA)
    decision = await check().mail(ctx, "x@example.org")
    assert "\r" not in decision.reply and "\n" not in decision.reply
