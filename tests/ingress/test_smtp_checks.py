"""The ingress runs its check chain per phase, and enforces its own limits and AUTH rules.

Real SMTP over loopback against the real protocol and handler. The checks here are small check
classes written for the tests (the chain is the thing under test, not a particular check); the
authenticator is an in-memory directory (a swapped transport: the LDAP one is tested against slapd).
"""
from __future__ import annotations

import asyncio
import base64
import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest

from ingress.checks import PASS, Check, CheckChain, CheckContext, CheckServices, Decision, refuse
from ingress.checks.dnsbl import DnsblCheck, DnsblSettings
from ingress.checks.relay import RelayCheck, RelaySettings
from ingress.checks.rhsbl import RhsblCheck, RhsblSettings
from ingress.checks.sender_domain import SenderDomainCheck, SenderDomainSettings
from ingress.handler import IngressHandler
from ingress.server import make_protocol
from ingress.tls import self_signed_certificate
from pipeline.blobstore import FileBlobStore
from pipeline.settings import IngressSettings, SubmissionSettings
from schemas.events import SmtpCheck
from tests.ingress.test_smtp_session import Client, MemorySink

pytestmark = pytest.mark.timeout(30)
LOCAL = frozenset({"school.test"})


@dataclass(frozen=True, slots=True)
class _NoSettings:
    pass


class ScriptedCheck(Check):
    """Answers each phase from a script: a Decision, an exception to raise, or "hang"."""

    name = "scripted"
    description = "test check"
    Settings = _NoSettings

    def __init__(self, **script) -> None:
        super().__init__(_NoSettings(), CheckServices(local_domains=LOCAL))
        self.script = script
        self.seen: list[tuple[str, tuple]] = []

    async def _answer(self, phase: str, ctx: CheckContext, *args) -> Decision:
        self.seen.append((phase, args))
        answer = self.script.get(phase, PASS)
        if answer == "hang":
            await asyncio.sleep(3600)
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, str):  # a note, not a refusal
            ctx.notes[self.name] = answer
            return PASS
        return answer

    async def connect(self, ctx):
        return await self._answer("connect", ctx)

    async def mail(self, ctx, sender):
        return await self._answer("mail", ctx, sender)

    async def rcpt(self, ctx, recipient):
        return await self._answer("rcpt", ctx, recipient)

    async def data(self, ctx, raw):
        return await self._answer("data", ctx, raw)


class MemoryDirectory:
    """Authenticator over a dict login → (password, addresses)."""

    @dataclass
    class Account:
        uid: str
        mail: str
        addresses: list[str]

    def __init__(self, users: dict[str, tuple[str, list[str]]], down: bool = False) -> None:
        self.users, self.down, self.calls = users, down, 0

    async def authenticate(self, login: str, password: str):
        self.calls += 1
        if self.down:
            raise ConnectionError("ldap://10.0.0.7:389 unreachable")
        entry = self.users.get(login)
        if entry is None or entry[0] != password or not password:
            return None
        return self.Account(uid=login, mail=entry[1][0], addresses=entry[1])


@pytest.fixture
async def serve(tmp_path: Path):
    """serve(checks=[...], settings=..., **handler kwargs) -> (sink, port); closes everything after."""
    servers = []

    async def _serve(checks=(), *, ssl_context=None, implicit_tls=False, **kwargs):
        settings = kwargs.pop("settings", IngressSettings())
        sink = MemorySink()
        chain = CheckChain([*checks, RelayCheck(RelaySettings(), CheckServices(local_domains=LOCAL))],
                           settings.check_timeout)
        handler = IngressHandler(settings, FileBlobStore(tmp_path / "blobs"), sink, chain, **kwargs)
        factory = make_protocol(handler, settings, tls_context=ssl_context, implicit_tls=implicit_tls)
        server = await asyncio.get_running_loop().create_server(
            factory, host="127.0.0.1", port=0, ssl=ssl_context if implicit_tls else None)
        servers.append(server)
        return sink, server.sockets[0].getsockname()[1]

    yield _serve
    for server in servers:
        server.close()
        await server.wait_closed()
    await asyncio.sleep(0.05)


async def connect(port: int, ssl_context: ssl.SSLContext | None = None) -> tuple[Client, list[str]]:
    client = Client(*await asyncio.open_connection("127.0.0.1", port, ssl=ssl_context))
    return client, await client.reply()


# ---- the chain ---------------------------------------------------------------------------------


async def test_a_connect_refusal_replaces_the_banner_and_is_recorded(serve):
    check = ScriptedCheck(connect=refuse("554 5.7.1 Service unavailable; client blocked", "dnsbl_listed"))
    sink, port = await serve([check])
    client, greeting = await connect(port)
    assert greeting == ["554 5.7.1 Service unavailable; client blocked"]
    assert await client.rest() == b""  # closed
    (reject,) = sink.rejects()
    assert (reject.phase, reject.check, reject.reason_code, reject.reply.code) == ("connect", "scripted",
                                                                                  "dnsbl_listed", 554)
    assert reject.client_ip == "127.0.0.1"


async def test_refusals_at_mail_and_rcpt_carry_sender_and_recipient(serve):
    check = ScriptedCheck(mail=PASS, rcpt=refuse("550 5.1.1 Recipient address rejected: User unknown",
                                                 "unknown_recipient"))
    sink, port = await serve([check])
    client, _ = await connect(port)
    await client.cmd("EHLO c.ext.test")
    assert (await client.cmd("MAIL FROM:<a@ext.test>")).startswith("250 2.1.0")
    assert (await client.cmd("RCPT TO:<nobody@school.test>")) == "550 5.1.1 Recipient address rejected: User unknown"
    (reject,) = sink.rejects()
    assert (reject.phase, reject.sender, reject.recipient) == ("rcpt", "a@ext.test", "nobody@school.test")
    assert ("mail", ("a@ext.test",)) in check.seen


async def test_a_check_that_hangs_is_a_temporary_failure(serve):
    sink, port = await serve([ScriptedCheck(rcpt="hang")], settings=IngressSettings(check_timeout=0.2))
    client, _ = await connect(port)
    await client.cmd("EHLO c.ext.test")
    await client.cmd("MAIL FROM:<a@ext.test>")
    assert (await client.cmd("RCPT TO:<max@school.test>")).startswith("451 4.3.0 ")
    assert [r.reason_code for r in sink.rejects()] == ["scripted_timeout"]


async def test_a_check_that_crashes_is_a_temporary_failure_without_internals(serve):
    sink, port = await serve([ScriptedCheck(mail=RuntimeError("ldap://10.0.0.7 said no"))])
    client, _ = await connect(port)
    await client.cmd("EHLO c.ext.test")
    reply = await client.cmd("MAIL FROM:<a@ext.test>")
    assert reply.startswith("451 4.3.0 ") and "10.0.0.7" not in reply and "RuntimeError" not in reply
    assert [r.reason_code for r in sink.rejects()] == ["scripted_error"]
    assert (await client.cmd("RCPT TO:<max@school.test>")).startswith("503 ")  # no sender was taken


async def test_a_data_refusal_stores_nothing(serve):
    sink, port = await serve([ScriptedCheck(data=refuse("553 5.7.1 Sender address rejected", "sender_not_owned"))])
    client, _ = await connect(port)
    await client.cmd("EHLO c.ext.test")
    await client.cmd("MAIL FROM:<a@ext.test>")
    await client.cmd("RCPT TO:<max@school.test>")
    assert (await client.cmd("DATA")).startswith("354")
    assert (await client.cmd(b"Subject: x\r\n\r\nbody\r\n.")) == "553 5.7.1 Sender address rejected"
    assert sink.persisted == [] and [r.phase for r in sink.rejects()] == ["data"]


async def test_an_allowlisted_session_reports_its_standing_once_and_each_message_keeps_it_per_check(serve):
    services = CheckServices(local_domains=LOCAL)  # (no resolver: the skipped checks ask no DNS)
    reputation = [DnsblCheck(DnsblSettings(), services), SenderDomainCheck(SenderDomainSettings(), services),
                  RhsblCheck(RhsblSettings(), services)]
    sink, port = await serve(reputation, settings=IngressSettings(client_allowlist=["127.0.0.0/8"]))
    client, _ = await connect(port)
    await client.cmd("EHLO relay.school.test")
    for n in range(2):  # two transactions of one session
        assert (await client.cmd("MAIL FROM:<a@ext.test>")).startswith("250 ")
        assert (await client.cmd("RCPT TO:<max@school.test>")).startswith("250 ")
        assert (await client.cmd("DATA")).startswith("354")
        assert (await client.cmd(b"Subject: %d\r\n\r\nbody\r\n." % n)).startswith("250 ")
    assert [(e.phase, e.check, e.result) for e in sink.notified if isinstance(e, SmtpCheck)] == [
        ("connect", "reputation", "allowlisted")]  # not one per check and message
    assert len(sink.persisted) == 2
    for received in sink.persisted:
        assert {k: received.checks[k] for k in ("dnsbl", "sender_domain", "rhsbl")} == dict.fromkeys(
            ("dnsbl", "sender_domain", "rhsbl"), "allowlisted")


async def test_notes_become_smtp_check_events(serve):
    sink, port = await serve([ScriptedCheck(rcpt="passed_after_retry")])
    client, _ = await connect(port)
    await client.cmd("EHLO c.ext.test")
    await client.cmd("MAIL FROM:<a@ext.test>")
    assert (await client.cmd("RCPT TO:<max@school.test>")).startswith("250 ")
    assert (await client.cmd("RCPT TO:<lena@school.test>")).startswith("250 ")
    checks = [e for e in sink.notified if isinstance(e, SmtpCheck)]
    assert [(c.check, c.result, c.phase, c.recipient) for c in checks] == [
        ("scripted", "passed_after_retry", "rcpt", "max@school.test"),
        ("scripted", "passed_after_retry", "rcpt", "lena@school.test"),
    ]


class MailScriptedCheck(ScriptedCheck):
    """Skips after a "temporary failure" for the first sender only."""

    name = "mailscripted"

    async def mail(self, ctx, sender):
        if sender == "a@ext.test":
            ctx.notes[self.name] = "skipped_tempfail"
        return PASS


async def test_checks_skipped_after_a_temporary_failure_are_named_in_the_received_event(serve):
    # a connect-phase skip (the dnsbl) holds for the session; a mail-phase skip only for its transaction
    sink, port = await serve([ScriptedCheck(connect="skipped_tempfail"), MailScriptedCheck()])
    client, _ = await connect(port)
    await client.cmd("EHLO c.ext.test")
    for sender in ("a@ext.test", "b@ext.test"):
        await client.cmd(f"MAIL FROM:<{sender}>")
        await client.cmd("RCPT TO:<max@school.test>")
        await client.cmd("DATA")
        assert (await client.cmd(b"Subject: x\r\n\r\nbody\r\n.")).startswith("250 ")
    first, second = sink.persisted
    assert first.skipped_checks == ["scripted", "mailscripted"]
    assert second.skipped_checks == ["scripted"]  # the session's skip stays, the transaction's is gone
    # every check's note travels in the received event too, for the spam stage to weigh
    assert first.checks == {"scripted": "skipped_tempfail", "mailscripted": "skipped_tempfail"}
    assert second.checks == {"scripted": "skipped_tempfail"}


async def test_no_skip_no_skipped_checks(serve):
    sink, port = await serve([ScriptedCheck(connect="score=1")])
    client, _ = await connect(port)
    await client.cmd("EHLO c.ext.test")
    await client.cmd("MAIL FROM:<a@ext.test>")
    await client.cmd("RCPT TO:<max@school.test>")
    await client.cmd("DATA")
    assert (await client.cmd(b"Subject: x\r\n\r\nbody\r\n.")).startswith("250 ")
    assert sink.persisted[0].skipped_checks == []
    assert sink.persisted[0].checks == {"scripted": "score=1"}


# ---- limits --------------------------------------------------------------------------------------


async def test_concurrent_connections_per_client_are_limited(serve):
    sink, port = await serve(settings=IngressSettings(max_connections_per_ip=2))
    first, g1 = await connect(port)
    second, g2 = await connect(port)
    third, g3 = await connect(port)
    assert g1[0].startswith("220 ") and g2[0].startswith("220 ")
    assert g3 == ["421 4.7.0 Too many connections from your address, try again later"]
    assert [r.reason_code for r in sink.rejects()] == ["too_many_connections"]
    assert await first.cmd("QUIT") == "221 2.0.0 Bye"
    await first.rest()
    await asyncio.sleep(0.1)
    fourth, g4 = await connect(port)  # the slot of the first is free again
    assert g4[0].startswith("220 ")


async def test_total_connections_are_limited(serve):
    _, port = await serve(settings=IngressSettings(max_connections=1))
    _, g1 = await connect(port)
    _, g2 = await connect(port)
    assert g1[0].startswith("220 ") and g2 == ["421 4.7.0 Too many connections, try again later"]


async def test_recipients_per_message_are_limited(serve):
    sink, port = await serve(settings=IngressSettings(max_recipients=2))
    client, _ = await connect(port)
    await client.cmd("EHLO c.ext.test")
    await client.cmd("MAIL FROM:<a@ext.test>")
    assert (await client.cmd("RCPT TO:<a1@school.test>")).startswith("250 ")
    assert (await client.cmd("RCPT TO:<a2@school.test>")).startswith("250 ")
    assert (await client.cmd("RCPT TO:<a3@school.test>")) == "452 4.5.3 Too many recipients"
    assert [r.reason_code for r in sink.rejects()] == ["too_many_recipients"]


async def test_too_many_bad_commands_end_the_session(serve):
    _, port = await serve(settings=IngressSettings(max_bad_commands=3))
    client, _ = await connect(port)
    for bad in ("FOO", "MAIL FROM:<a@ext.test>", "BAR"):  # unknown, out of sequence, unknown
        assert (await client.cmd(bad))[:1] == "5"
    assert await client.cmd("BAZ") == "421 4.7.0 Too many errors, closing connection"
    assert await client.rest() == b""


async def test_an_early_talker_is_refused(serve):
    sink, port = await serve(settings=IngressSettings(greet_delay=0.5))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"EHLO spam.bot\r\n")  # before the banner
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    assert data == b"554 5.5.1 Protocol error: talking before the greeting\r\n"
    assert [r.reason_code for r in sink.rejects()] == ["early_talker"]
    writer.close()
    _, greeting = await connect(port)  # a patient client gets the banner after the delay
    assert greeting[0].startswith("220 ")


async def test_trusted_networks_may_relay_and_others_may_not(serve):
    _, port = await serve(settings=IngressSettings(relay_networks=["127.0.0.0/8"]))
    client, _ = await connect(port)
    await client.cmd("EHLO c.school.test")
    await client.cmd("MAIL FROM:<a@school.test>")
    assert (await client.cmd("RCPT TO:<r@ext.test>")).startswith("250 ")
    _, port = await serve(settings=IngressSettings(relay_networks=["10.0.0.0/8"]))
    client, _ = await connect(port)
    await client.cmd("EHLO c.school.test")
    await client.cmd("MAIL FROM:<a@school.test>")
    assert (await client.cmd("RCPT TO:<r@ext.test>")).startswith("554 5.7.1 ")


OPEN_RELAY_FORMS = {  # as the client writes it -> where an authenticated or trusted client's mail goes
    "r@ext.test": "r@ext.test",
    '"r@ext.test"': "r@ext.test",
    "r%ext.test@school.test": "r@ext.test",
    "ext.test!r@school.test": "r@ext.test",
    "@school.test:r@ext.test": "r@ext.test",
    '"r@ext.test"@school.test': "r@ext.test",
    "r@ext.test@school.test": "r@ext.test",
}


async def test_routing_forms_are_refused_from_strangers_and_resolved_for_trusted_clients(serve):
    _, port = await serve()
    client, _ = await connect(port)
    await client.cmd("EHLO c.ext.test")
    await client.cmd("MAIL FROM:<a@ext.test>")
    for form in OPEN_RELAY_FORMS:
        assert (await client.cmd(f"RCPT TO:<{form}>")).startswith("554 5.7.1 "), form

    sink, port = await serve(settings=IngressSettings(relay_networks=["127.0.0.0/8"]))
    client, _ = await connect(port)
    await client.cmd("EHLO c.school.test")
    await client.cmd("MAIL FROM:<a@school.test>")
    for form in OPEN_RELAY_FORMS:
        assert (await client.cmd(f"RCPT TO:<{form}>")).startswith("250 "), form
    assert (await client.cmd("RCPT TO:<r%ext.test@other.test>")).startswith("554 5.7.1 ")  # not our route
    await client.cmd("DATA")
    assert (await client.cmd("Subject: routed\r\n\r\nHallo.\r\n.")).startswith("250 ")
    (received,) = sink.persisted
    assert received.envelope.rcpt_to == ["r@ext.test"]  # seven ways to write one address: one copy


async def test_rset_starts_the_envelope_over(serve):
    check = ScriptedCheck()
    _, port = await serve([check])
    client, _ = await connect(port)
    await client.cmd("EHLO c.ext.test")
    await client.cmd("MAIL FROM:<a@ext.test>")
    assert (await client.cmd("RSET")) == "250 2.0.0 OK"
    assert (await client.cmd("RCPT TO:<max@school.test>")).startswith("503 ")


# ---- AUTH ----------------------------------------------------------------------------------------

USERS = {"anna": ("Anna2026!", ["anna.schmidt@school.test", "sekretariat@school.test"])}


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path_factory.mktemp("tls"), "mx.school.test")


def _contexts(tls_files) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(*tls_files)
    client = ssl.create_default_context(cafile=str(tls_files[0]))
    client.check_hostname = False  # 127.0.0.1 is not in the certificate
    return server, client


def _plain(login: str, password: str) -> str:
    return base64.b64encode(f"\0{login}\0{password}".encode()).decode()


async def test_auth_over_implicit_tls(serve, tls_files):
    server_ctx, client_ctx = _contexts(tls_files)
    directory = MemoryDirectory(USERS)
    sink, port = await serve(ssl_context=server_ctx, implicit_tls=True, listener="submission",
                             authenticator=directory)
    client, greeting = await connect(port, client_ctx)
    await client.cmd("EHLO laptop")
    assert greeting[0].startswith("220 ")
    assert await client.cmd(f"AUTH PLAIN {_plain('anna', 'wrong')}") == "535 5.7.8 Authentication credentials invalid"
    assert await client.cmd(f"AUTH PLAIN {_plain('anna', 'Anna2026!')}") == "235 2.7.0 Authentication successful"
    assert (await client.cmd("MAIL FROM:<anna.schmidt@school.test>")).startswith("250 ")
    assert (await client.cmd("RCPT TO:<r@ext.test>")).startswith("250 ")  # authenticated: may relay
    assert [r.reason_code for r in sink.rejects()] == ["auth_failed"]
    assert [(e.check, e.result) for e in sink.notified if isinstance(e, SmtpCheck)] == [
        ("auth", "authenticated"), ("relay", "authenticated")]


async def test_auth_login_and_the_ehlo_advertisement(serve, tls_files):
    server_ctx, client_ctx = _contexts(tls_files)
    _, port = await serve(ssl_context=server_ctx, implicit_tls=True, listener="submission",
                          authenticator=MemoryDirectory(USERS))
    client, _ = await connect(port, client_ctx)
    await client.send(b"EHLO laptop\r\n")
    assert "250-AUTH LOGIN PLAIN" in await client.reply()
    assert await client.cmd("AUTH LOGIN") == "334 VXNlciBOYW1lAA=="
    assert await client.cmd(base64.b64encode(b"anna").decode()) == "334 UGFzc3dvcmQA"
    assert await client.cmd(base64.b64encode(b"Anna2026!").decode()) == "235 2.7.0 Authentication successful"


async def test_auth_without_tls_is_refused(serve, tls_files):
    server_ctx, _ = _contexts(tls_files)
    directory = MemoryDirectory(USERS)
    _, port = await serve(ssl_context=server_ctx, listener="submission", authenticator=directory)
    client, _ = await connect(port)
    await client.send(b"EHLO laptop\r\n")
    ehlo = await client.reply()
    assert "250-STARTTLS" in ehlo and not any("AUTH" in line for line in ehlo)
    assert (await client.cmd(f"AUTH PLAIN {_plain('anna', 'Anna2026!')}")).startswith("530 ")
    assert directory.calls == 0  # the credentials were never looked at


async def test_failed_auth_is_rate_limited_per_client(serve, tls_files):
    server_ctx, client_ctx = _contexts(tls_files)
    directory = MemoryDirectory(USERS)
    sink, port = await serve(ssl_context=server_ctx, implicit_tls=True, listener="submission",
                             authenticator=directory,
                             submission=SubmissionSettings(max_auth_failures=3, auth_failure_window=60))
    client, _ = await connect(port, client_ctx)
    await client.cmd("EHLO laptop")
    for _ in range(3):
        assert (await client.cmd(f"AUTH PLAIN {_plain('anna', 'guess')}")).startswith("535 5.7.8")
    # the right password no longer helps, and the directory is not asked
    assert (await client.cmd(f"AUTH PLAIN {_plain('anna', 'Anna2026!')}")) == (
        "454 4.7.0 Too many failed authentication attempts, try again later")
    assert directory.calls == 3
    other, _ = await connect(port, client_ctx)  # the limit is per client address, not per session
    await other.cmd("EHLO laptop")
    assert (await other.cmd(f"AUTH PLAIN {_plain('anna', 'Anna2026!')}")).startswith("454 4.7.0")
    assert [r.reason_code for r in sink.rejects()].count("auth_rate_limited") == 2


async def test_directory_down_is_a_temporary_auth_failure(serve, tls_files):
    server_ctx, client_ctx = _contexts(tls_files)
    _, port = await serve(ssl_context=server_ctx, implicit_tls=True, listener="submission",
                          authenticator=MemoryDirectory(USERS, down=True))
    client, _ = await connect(port, client_ctx)
    await client.cmd("EHLO laptop")
    reply = await client.cmd(f"AUTH PLAIN {_plain('anna', 'Anna2026!')}")
    assert reply == "454 4.7.0 Temporary authentication failure, try again later"


async def test_the_mx_listener_offers_starttls_without_requiring_it(serve, tls_files, tmp_path):
    server_ctx, client_ctx = _contexts(tls_files)
    sink, port = await serve(ssl_context=server_ctx)  # listener "mx"
    plain, _ = await connect(port)
    await plain.send(b"EHLO mta.ext.test\r\n")
    ehlo = await plain.reply()
    assert "250-STARTTLS" in ehlo and not any("AUTH" in line for line in ehlo)
    assert (await plain.cmd("MAIL FROM:<a@ext.test>")).startswith("250 ")  # plain SMTP still welcome
    assert (await plain.cmd("RCPT TO:<max@school.test>")).startswith("250 ")
    encrypted, _ = await connect(port)
    await encrypted.cmd("EHLO mta.ext.test")
    assert (await encrypted.cmd("STARTTLS")).startswith("220 ")
    await encrypted.writer.start_tls(client_ctx)
    await encrypted.send(b"EHLO mta.ext.test\r\n")
    assert not any("STARTTLS" in line for line in await encrypted.reply())  # once is enough
    assert (await encrypted.cmd("MAIL FROM:<a@ext.test>")).startswith("250 ")
    assert (await encrypted.cmd("RCPT TO:<max@school.test>")).startswith("250 ")
    assert (await encrypted.cmd("DATA")).startswith("354 ")
    assert (await encrypted.cmd(b"Subject: sealed\r\n\r\nHallo.\r\n.")).startswith("250 2.0.0 Ok: queued as ")
    (received,) = sink.persisted
    assert received.client.tls and received.client.helo == "mta.ext.test"
    stored = FileBlobStore(tmp_path / "blobs").get(received.blob)
    assert b"with ESMTPS id " + received.message_id.encode() in stored


async def test_mx_listener_offers_no_auth(serve):
    _, port = await serve()
    client, _ = await connect(port)
    await client.send(b"EHLO c.ext.test\r\n")
    assert not any("AUTH" in line for line in await client.reply())
    assert (await client.cmd(f"AUTH PLAIN {_plain('anna', 'Anna2026!')}")).startswith("538 5.7.11")


@pytest.mark.parametrize("address, reply", [
    ("r%ext.test@school.test", "554 5.7.1 "),
    ("@school.test:r@ext.test", "554 5.7.1 "),
    ("r@" + "a" * 64 + ".school.test", "501 5.1.3 "),  # a label over 63 characters
    ("r@bad..school.test", "553 5.1.3 "),  # aiosmtpd's own parser refuses this one first
])
async def test_routing_forms_and_plain_syntax_errors_get_different_replies(serve, address, reply):
    sink, port = await serve()
    client, _ = await connect(port)
    await client.cmd("EHLO c.ext.test")
    await client.cmd("MAIL FROM:<a@ext.test>")
    assert (await client.cmd(f"RCPT TO:<{address}>")).startswith(reply)
