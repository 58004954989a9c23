"""The SMTP client against a real SMTP server (aiosmtpd): STARTTLS, implicit TLS, certificate checks, AUTH.

Certificates are made with the openssl CLI for the test. What must hold: mail never goes out in
clear when TLS is required, credentials never go out in clear unless tls = "none", and every problem
of ours (TLS, certificate, credentials) defers the delivery (4xx) instead of bouncing it.
"""
from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from consumers.sinks.destination import read_password, smtp_transport
from consumers.sinks.transport import (
    Delivery,
    SmtpClientTransport,
    client_ssl_context,
    parse_extensions,
    tls_handshake_failed,
)
from pipeline.settings import ConfigError, SmarthostSinkSettings
from schemas.events import Reply

pytestmark = pytest.mark.timeout(60)

USER, PASSWORD = "relay@school.test", "s3cret pass"
RECIPIENTS = ["a@ext.test", "b@ext.test"]
MESSAGE = b"From: max@school.test\r\nTo: a@ext.test\r\nSubject: out\r\n\r\n.dot line\r\nbody\r\n"


# ---- certificates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cert:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context


def _make_cert(directory: Path, name: str, subject_alt_name: str) -> Cert:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}",
                    "-addext", f"subjectAltName={subject_alt_name}"],
                   check=True, capture_output=True)
    return Cert(cert, key)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, Cert]:
    directory = tmp_path_factory.mktemp("certs")
    return {
        "local": _make_cert(directory, "smarthost", "IP:127.0.0.1,DNS:localhost"),
        "elsewhere": _make_cert(directory, "elsewhere", "DNS:elsewhere.test"),  # does not name 127.0.0.1
    }


# ---- a real SMTP server -------------------------------------------------------------------------


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    tls: bool
    authenticated: bool


@dataclass
class Recorder:
    """aiosmtpd handler and authenticator: keeps what arrived and every AUTH attempt."""

    messages: list[Received] = field(default_factory=list)
    auth_attempts: list[tuple[str, bytes, bytes, bool]] = field(default_factory=list)  # mech, user, pw, tls

    async def handle_DATA(self, server, session, envelope) -> str:
        self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content,
                                      tls=session.ssl is not None or server.transport.get_extra_info("sslcontext")
                                      is not None, authenticated=bool(session.authenticated)))
        return "250 2.0.0 Ok: queued as 4711"

    def authenticator(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        encrypted = session.ssl is not None or server.transport.get_extra_info("sslcontext") is not None
        self.auth_attempts.append((mechanism, auth_data.login, auth_data.password, encrypted))
        ok = auth_data.login == USER.encode() and auth_data.password == PASSWORD.encode()
        # handled=False: aiosmtpd answers the failure itself (535 5.7.8)
        return AuthResult(success=ok, handled=False, auth_data=auth_data)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def smtp_server():
    """Start an aiosmtpd server with the given SMTP options; returns (recorder, port)."""
    controllers: list[Controller] = []

    def start(**options) -> tuple[Recorder, int]:
        recorder = Recorder()
        port = _free_port()
        controller = Controller(recorder, hostname="127.0.0.1", port=port, server_hostname="smarthost.test",
                                authenticator=recorder.authenticator, **options)
        controller.start()
        controllers.append(controller)
        return recorder, port

    yield start
    for controller in controllers:
        controller.stop()


def _client(port: int, *, tls: str, verify: bool = False, ca_file: str = "", username: str = "",
            password: str = "", timeout: float = 10) -> SmtpClientTransport:
    context = client_ssl_context(verify, ca_file) if tls != "none" else None
    return SmtpClientTransport("127.0.0.1", port, lmtp=False, helo_name="mx.school.test", timeout=timeout, tls=tls,
                               ssl_context=context, username=username, password=password)


async def _deliver(transport: SmtpClientTransport) -> dict[str, Reply]:
    return await transport.deliver(Delivery(mail_from="max@school.test", recipients=RECIPIENTS, data=MESSAGE))


QUEUED = Reply(code=250, enhanced="2.0.0", text="Ok: queued as 4711")


def _assert_deferred(replies: dict[str, Reply], *words: str) -> None:
    assert list(replies) == RECIPIENTS
    for reply in replies.values():
        assert 400 <= reply.code < 500 and reply.enhanced == "4.7.0", reply
        for word in words:
            assert word in reply.text, reply


def _assert_delivered(replies: dict[str, Reply], recorder: Recorder, *, tls: bool) -> Received:
    assert replies == dict.fromkeys(RECIPIENTS, QUEUED)
    [got] = recorder.messages
    assert (got.mail_from, got.rcpt_tos, got.content, got.tls) == ("max@school.test", RECIPIENTS, MESSAGE, tls)
    return got


# ---- STARTTLS -----------------------------------------------------------------------------------


async def test_opportunistic_uses_starttls_when_offered(smtp_server, certs):
    # the server refuses MAIL before STARTTLS, and after it until EHLO is sent again (RFC 3207 4.2)
    recorder, port = smtp_server(tls_context=certs["local"].server_context(), require_starttls=True)
    replies = await _deliver(_client(port, tls="opportunistic"))
    _assert_delivered(replies, recorder, tls=True)


async def test_opportunistic_goes_on_in_clear_without_starttls(smtp_server):
    recorder, port = smtp_server()
    replies = await _deliver(_client(port, tls="opportunistic"))
    _assert_delivered(replies, recorder, tls=False)


async def test_required_tls_without_starttls_defers_every_recipient(smtp_server):
    recorder, port = smtp_server()
    replies = await _deliver(_client(port, tls="required"))
    _assert_deferred(replies, "TLS not available at smarthost")
    assert not tls_handshake_failed(replies)
    assert recorder.messages == []


async def test_required_tls_with_starttls_delivers(smtp_server, certs):
    recorder, port = smtp_server(tls_context=certs["local"].server_context())
    _assert_delivered(await _deliver(_client(port, tls="required")), recorder, tls=True)


async def test_tls_none_never_starts_tls(smtp_server, certs):
    recorder, port = smtp_server(tls_context=certs["local"].server_context())
    _assert_delivered(await _deliver(_client(port, tls="none")), recorder, tls=False)


# ---- certificate checks -------------------------------------------------------------------------


async def test_verify_rejects_a_self_signed_certificate_without_ca_file(smtp_server, certs):
    recorder, port = smtp_server(tls_context=certs["local"].server_context())
    replies = await _deliver(_client(port, tls="opportunistic", verify=True))
    _assert_deferred(replies, "TLS handshake with smarthost failed", "CERTIFICATE_VERIFY_FAILED")
    assert recorder.messages == []
    assert tls_handshake_failed(replies)  # what the MX sink's plain-text retry looks for


async def test_verify_with_the_ca_file_delivers(smtp_server, certs):
    recorder, port = smtp_server(tls_context=certs["local"].server_context())
    replies = await _deliver(_client(port, tls="required", verify=True, ca_file=str(certs["local"].cert)))
    _assert_delivered(replies, recorder, tls=True)


async def test_verify_checks_the_configured_host_name(smtp_server, certs):
    """A certificate the CA file vouches for, but for another name than the configured host."""
    elsewhere = certs["elsewhere"]
    recorder, port = smtp_server(tls_context=elsewhere.server_context())
    replies = await _deliver(_client(port, tls="required", verify=True, ca_file=str(elsewhere.cert)))
    _assert_deferred(replies, "TLS handshake with smarthost failed")
    assert "127.0.0.1" in replies[RECIPIENTS[0]].text  # the mismatch names the host we asked for
    assert recorder.messages == []


def test_missing_ca_file_is_an_error_at_start(tmp_path):
    with pytest.raises(FileNotFoundError):
        client_ssl_context(True, str(tmp_path / "nope.pem"))


# ---- implicit TLS -------------------------------------------------------------------------------


async def test_implicit_tls_with_auth(smtp_server, certs):
    # aiosmtpd offers AUTH on an implicit-TLS port only when told it need not wait for STARTTLS
    recorder, port = smtp_server(ssl_context=certs["local"].server_context(), auth_require_tls=False)
    transport = _client(port, tls="implicit", verify=True, ca_file=str(certs["local"].cert),
                        username=USER, password=PASSWORD)
    got = _assert_delivered(await _deliver(transport), recorder, tls=True)
    assert got.authenticated
    assert [(m, tls) for m, _, _, tls in recorder.auth_attempts] == [("PLAIN", True)]


async def test_implicit_tls_against_a_plain_server_defers(smtp_server):
    recorder, port = smtp_server()
    _assert_deferred(await _deliver(_client(port, tls="implicit")), "TLS handshake with smarthost failed")
    assert recorder.messages == []


# ---- AUTH ---------------------------------------------------------------------------------------


async def test_auth_plain_with_the_right_password(smtp_server, certs):
    recorder, port = smtp_server(tls_context=certs["local"].server_context(), auth_required=True)
    got = _assert_delivered(await _deliver(_client(port, tls="required", username=USER, password=PASSWORD)),
                            recorder, tls=True)
    assert got.authenticated
    assert recorder.auth_attempts == [("PLAIN", USER.encode(), PASSWORD.encode(), True)]


async def test_auth_login_when_plain_is_not_offered(smtp_server, certs):
    recorder, port = smtp_server(tls_context=certs["local"].server_context(), auth_required=True,
                                 auth_exclude_mechanism=["PLAIN"])
    got = _assert_delivered(await _deliver(_client(port, tls="required", username=USER, password=PASSWORD)),
                            recorder, tls=True)
    assert got.authenticated
    assert recorder.auth_attempts == [("LOGIN", USER.encode(), PASSWORD.encode(), True)]


async def test_wrong_password_defers_every_recipient(smtp_server, certs):
    recorder, port = smtp_server(tls_context=certs["local"].server_context(), auth_required=True)
    replies = await _deliver(_client(port, tls="required", username=USER, password="wrong"))
    _assert_deferred(replies, "AUTH at smarthost failed", "535")  # the server said 535: still only deferred
    assert recorder.messages == []


async def test_no_credentials_in_clear_when_tls_is_not_offered(smtp_server):
    recorder, port = smtp_server(auth_require_tls=False)  # offers AUTH without TLS
    replies = await _deliver(_client(port, tls="opportunistic", username=USER, password=PASSWORD))
    _assert_deferred(replies, "credentials are not sent in clear")
    assert recorder.auth_attempts == [] and recorder.messages == []


async def test_tls_none_authenticates_in_clear(smtp_server):
    recorder, port = smtp_server(auth_require_tls=False)
    got = _assert_delivered(await _deliver(_client(port, tls="none", username=USER, password=PASSWORD)),
                            recorder, tls=False)
    assert got.authenticated and recorder.auth_attempts == [("PLAIN", USER.encode(), PASSWORD.encode(), False)]


async def test_auth_not_offered_defers(smtp_server):
    recorder, port = smtp_server()  # AUTH only after STARTTLS, and it has no certificate: never offered
    replies = await _deliver(_client(port, tls="none", username=USER, password=PASSWORD))
    _assert_deferred(replies, "does not offer AUTH")
    assert recorder.messages == []


async def test_no_usable_auth_mechanism_defers(smtp_server, certs):
    recorder, port = smtp_server(tls_context=certs["local"].server_context(),
                                 auth_exclude_mechanism=["PLAIN", "LOGIN"])
    replies = await _deliver(_client(port, tls="required", username=USER, password=PASSWORD))
    _assert_deferred(replies, "no AUTH mechanism we use")
    assert recorder.messages == []


# ---- STARTTLS injection (a scripted server: aiosmtpd would not misbehave) -----------------------


async def test_plaintext_injected_after_starttls_reply_defers():
    """Data sent in clear right behind "220 ready for TLS" must not be read as if it came over TLS."""
    seen: list[bytes] = []

    async def injecting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 smarthost.test ESMTP\r\n")
        while line := await reader.readline():
            seen.append(line)
            if line.startswith(b"EHLO"):
                writer.write(b"250-smarthost.test\r\n250 STARTTLS\r\n")
            elif line.startswith(b"STARTTLS"):
                writer.write(b"220 2.0.0 Ready to start TLS\r\n250 injected\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(injecting, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        replies = await asyncio.wait_for(_deliver(_client(port, tls="opportunistic", timeout=2)), 10)
    finally:
        server.close()
        await server.wait_closed()
    _assert_deferred(replies, "ahead of the TLS handshake")
    assert not any(line.startswith((b"MAIL", b"AUTH")) for line in seen)


# ---- EHLO parsing and the sink's settings -------------------------------------------------------


def test_parse_extensions():
    lines = ["PIPELINING", "SIZE 10240000", "auth=LOGIN", "AUTH PLAIN LOGIN", "STARTTLS", ""]
    assert parse_extensions(lines) == {"PIPELINING": "", "SIZE": "10240000", "AUTH": "LOGIN PLAIN LOGIN",
                                       "STARTTLS": ""}


def test_password_file_is_read_at_start(tmp_path):
    secret = tmp_path / "smarthost.password"
    secret.write_text(PASSWORD + "\n")
    settings = SmarthostSinkSettings(username=USER, password_file=str(secret))
    assert read_password(settings, "sinks.smarthost") == PASSWORD


@pytest.mark.parametrize("password_file", ["", "missing"])
def test_missing_password_file_is_a_config_error(tmp_path, password_file):
    path = str(tmp_path / password_file) if password_file else ""
    with pytest.raises(ConfigError, match="sinks.smarthost.password_file"):
        smtp_transport(SmarthostSinkSettings(username=USER, password_file=path), "sinks.smarthost")


def test_missing_ca_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="sinks.smarthost.ca_file"):
        smtp_transport(SmarthostSinkSettings(tls="required", ca_file=str(tmp_path / "ca.pem")), "sinks.smarthost")


async def test_transport_from_settings_delivers_with_auth_over_verified_tls(smtp_server, certs, tmp_path):
    secret = tmp_path / "smarthost.password"
    secret.write_text(PASSWORD + "\n")
    recorder, port = smtp_server(tls_context=certs["local"].server_context(), auth_required=True)
    transport = smtp_transport(SmarthostSinkSettings(
        host="127.0.0.1", port=port, tls="required", verify=True, ca_file=str(certs["local"].cert),
        username=USER, password_file=str(secret), timeout=10), "sinks.smarthost")
    got = _assert_delivered(await _deliver(transport), recorder, tls=True)
    assert got.authenticated
    assert PASSWORD not in repr(transport)
