"""The local Dovecot (LMTP only) from pipeline.localstack.dovecot, run for real.

Needs the Debian packages dovecot-core and dovecot-lmtpd. The state directory is a short,
world-traversable directory under /tmp rather than pytest's tmp_path: unix socket paths are
limited to 107 bytes, and as root the mail is written as uid 8 (`mail`), which cannot enter
pytest's 0700 /tmp/pytest-of-root.
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.localstack import ServiceSpec
from pipeline.localstack.dovecot import USERS_FILE, dovecot_service, maildir_of

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("dovecot", path="/usr/sbin:/usr/bin") is None,
                       reason="dovecot not installed"),
]

KNOWN = "max.mustermann@school.test"
UNKNOWN = "nobody.here@school.test"
TINY = "tiny.quota@school.test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(host: str, port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"dovecot exited early with {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"dovecot did not listen on {host}:{port} within {timeout}s")


@pytest.fixture
def state_home() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="pst-dc-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Running:
    """A started Dovecot: its process, spec and log."""

    def __init__(self, spec: ServiceSpec, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.spec = spec
        self.proc = proc
        self.log = log

    def stop(self, timeout: float = 10.0) -> float:
        """SIGTERM, wait; returns seconds until exit (kills and fails beyond `timeout`)."""
        if self.proc.poll() is not None:
            return 0.0
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own session, see _start
            self.proc.wait()
            raise AssertionError(f"dovecot did not exit within {timeout}s of SIGTERM") from None
        return time.monotonic() - started


def _start(state_home: Path, users_file: Path) -> Running:
    port = _free_port()
    spec = dovecot_service(state_home, "127.0.0.1", port, users_file)
    assert spec.argv[1:3] == ["-F", "-c"]
    assert spec.ready_port == ("127.0.0.1", port)
    log = state_home / "dovecot.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(spec.argv, cwd=spec.cwd, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT,
                                env={**spec.env, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                                start_new_session=True)
    return Running(spec, proc, log)


@pytest.fixture
def start_dovecot(state_home: Path) -> Iterator[Callable[[Path], Running]]:
    """Start Dovecot with a users file; whatever was started is stopped (or killed) at teardown."""
    started: list[Running] = []

    def start(users_file: Path) -> Running:
        running = _start(state_home, users_file)
        started.append(running)
        _wait_port(*running.spec.ready_port, running.proc)  # type: ignore[misc]
        return running

    try:
        yield start
    finally:
        for running in started:
            try:
                running.stop()
            except AssertionError:
                pass
            finally:
                if running.proc.poll() is None:
                    os.killpg(running.proc.pid, signal.SIGKILL)
                    running.proc.wait()
            # shown by pytest only when the test failed
            print(f"--- {running.log}\n" + running.log.read_text(errors="replace"))


def _lmtp(running: Running) -> smtplib.LMTP:
    host, port = running.spec.ready_port  # type: ignore[misc]
    client = smtplib.LMTP(host, port, timeout=10)
    code, _ = client.ehlo("test.invalid")  # LMTP's LHLO
    assert code == 250
    # the LMTP sink pipelines to a server that offers it (consumers/sinks/transport.py): this one does
    assert client.has_extn("pipelining")
    return client


def test_known_and_unknown_recipient(
    start_dovecot: Callable[[Path], Running], state_home: Path
) -> None:
    dovecot = start_dovecot(USERS_FILE)
    body = "Hallo Max,\r\nmorgen faellt die erste Stunde aus.\r\n"
    message = (
        f"From: sekretariat@school.test\r\nTo: {KNOWN}\r\nSubject: Stundenplan\r\n"
        f"Message-ID: <dovecot-test-1@school.test>\r\n\r\n{body}"
    ).encode()
    client = _lmtp(dovecot)
    try:
        assert client.mail("sekretariat@school.test")[0] == 250
        known = client.rcpt(KNOWN)
        unknown = client.rcpt(UNKNOWN)
        # one accepted recipient -> exactly one reply after the final dot
        data = client.data(message)
    finally:
        client.quit()
    print("known:", known, "unknown:", unknown, "data:", data)
    assert known[0] == 250
    assert unknown[0] == 550 and unknown[1].startswith(b"5.1.1")
    assert data[0] == 250

    new = maildir_of(state_home, KNOWN) / "new"
    files = list(new.iterdir())
    assert len(files) == 1
    # Maildir files use bare LF line ends: Dovecot converts the CRLFs of the LMTP stream
    assert body.replace("\r\n", "\n").encode() in files[0].read_bytes()
    assert not maildir_of(state_home, UNKNOWN).exists()
    # as root the mail is written as `mail` (Dovecot refuses uid 0), else as the invoking user
    writer = pwd.getpwnam("mail").pw_uid if os.geteuid() == 0 else os.geteuid()
    assert files[0].stat().st_uid == writer

    took = dovecot.stop(timeout=10.0)
    assert dovecot.proc.returncode is not None
    print(f"dovecot stopped {took:.2f}s after SIGTERM, exit status {dovecot.proc.returncode}")


@pytest.fixture
def tiny_quota_users(state_home: Path) -> Path:
    users = state_home / "users-tiny-quota"
    users.write_text(
        USERS_FILE.read_text(encoding="utf-8")
        + f"{TINY}:*::::::userdb_quota_rule=*:storage=1K\n",
        encoding="utf-8",
    )
    users.chmod(0o644)
    return users


def test_over_quota_is_a_temporary_failure(
    start_dovecot: Callable[[Path], Running], state_home: Path, tiny_quota_users: Path
) -> None:
    dovecot = start_dovecot(tiny_quota_users)
    line = b"x" * 78 + b"\r\n"
    message = (
        f"From: sekretariat@school.test\r\nTo: {TINY}\r\nSubject: gross\r\n\r\n".encode()
        + line * (10 * 1024 // len(line))
    )
    assert len(message) >= 10 * 1024 - len(line)
    client = _lmtp(dovecot)
    try:
        assert client.mail("sekretariat@school.test")[0] == 250
        rcpt = client.rcpt(TINY)
        data = client.data(message)
    finally:
        client.quit()
    print("rcpt:", rcpt, "data:", data)
    assert rcpt[0] == 250  # quota is checked at DATA, not at RCPT (lmtp_rcpt_check_quota = no)
    assert 400 <= data[0] < 500, data
    assert data[0] == 452 and data[1].startswith(b"4.2.2")
    assert list((maildir_of(state_home, TINY) / "new").glob("*")) == []
    assert dovecot.stop(timeout=10.0) < 10.0
