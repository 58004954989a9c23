"""The real local stack for integration tests: `poststelle up` on test ports with its own state.

One stack per test session (Kafka, Dovecot, ingress, stages, sinks as real processes). Tests talk
to it over SMTP, read Dovecot's maildirs, query analytics, and kill or hold components through the
same supervisor an operator uses.
"""
from __future__ import annotations

import os
import shutil
import signal
import smtplib
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from pathlib import Path

import orjson
import pytest

REPO = Path(__file__).resolve().parents[2]
HOME = REPO / "var" / "test-stack"

# ports apart from the developer stack's defaults, so `make test` runs beside `make run`
TEST_ENV = {
    "POSTSTELLE_CONFIG": str(REPO / "deploy/local/poststelle.toml"),
    "POSTSTELLE_HOME": str(HOME),
    "POSTSTELLE_KAFKA__BOOTSTRAP": "127.0.0.1:39092",
    "POSTSTELLE_KAFKA__REQUEST_TIMEOUT_MS": "4000",
    "POSTSTELLE_LOCAL__KAFKA_CONTROLLER_PORT": "39093",
    "POSTSTELLE_INGRESS__PORT": "2535",
    "POSTSTELLE_INGRESS__PERSIST_TIMEOUT": "6",
    "POSTSTELLE_SINKS__LMTP__PORT": "2434",
    "POSTSTELLE_SINKS__ANALYTICS__QUERY_PORT": "18133",
    "POSTSTELLE_SINKS__ANALYTICS__BATCH_SECONDS": "0.5",
    "POSTSTELLE_SUPERVISOR__RESTART_BACKOFF_MAX": "2",
    "POSTSTELLE_RUNNER__TEMPFAIL_BACKOFF_MAX": "2",
}
SMTP_HOST, SMTP_PORT = "127.0.0.1", 2535


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@dataclass
class Stack:
    env: dict[str, str]
    process: subprocess.Popen
    home: Path = HOME
    log: Path = field(default=HOME.parent / "test-stack.log")

    # -- control ------------------------------------------------------------------------------

    def cli(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"poststelle {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done

    def status(self) -> dict:
        return orjson.loads((self.home / "run" / "status.json").read_bytes())

    def pid_of(self, component: str) -> int:
        return self.status()["components"][component]["pid"]

    def wait_ready(self, timeout: float = 120) -> None:
        self.cli("status", "--wait", str(timeout), timeout=timeout + 10)

    def kill(self, component: str, sig: int = signal.SIGKILL) -> int:
        pid = self.pid_of(component)
        os.kill(pid, sig)
        return pid

    def wait_restarted(self, component: str, old_pid: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            c = self.status()["components"][component]
            if c["pid"] != old_pid and c["state"] == "ready":
                return
            time.sleep(0.2)
        raise AssertionError(f"{component} not back within {timeout}s: {self.status()['components'][component]}")

    # -- mail ---------------------------------------------------------------------------------

    def maildir(self, address: str) -> Path:
        local, _, domain = address.partition("@")
        return self.home / "mail" / domain / local

    def messages(self, address: str) -> list[bytes]:
        new = self.maildir(address) / "new"
        return [p.read_bytes() for p in sorted(new.iterdir())] if new.exists() else []

    def test_ids(self, address: str) -> Counter:
        """How often each X-Test-Id arrived in the mailbox."""
        ids = Counter()
        for raw in self.messages(address):
            value = BytesHeaderParser().parsebytes(raw).get("X-Test-Id")
            if value:
                ids[value] += 1
        return ids

    def wait_for(self, predicate, timeout: float = 60, interval: float = 0.3, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    def sql(self, query: str) -> list[list]:
        done = self.cli("sql", "--json", query)
        return orjson.loads(done.stdout)["rows"]


def new_test_id() -> str:
    return uuid.uuid4().hex


def make_message(test_id: str, to: str = "max.mustermann@school.test", subject: str = "test",
                 body: str = "Hallo.\r\n") -> bytes:
    return (f"From: sender@example.org\r\nTo: {to}\r\nSubject: {subject}\r\nX-Test-Id: {test_id}\r\n"
            f"Message-ID: <{test_id}@example.org>\r\n\r\n{body}").encode()


def send(msg: bytes, to: list[str], mail_from: str = "sender@example.org") -> dict:
    with smtplib.SMTP(SMTP_HOST, SMTP_PORT, timeout=30) as client:
        return client.sendmail(mail_from, to, msg)


@pytest.fixture(scope="session")
def stack() -> Stack:
    if HOME.exists():
        shutil.rmtree(HOME)
    HOME.mkdir(parents=True)
    env = {**os.environ, **TEST_ENV}
    log = open(HOME.parent / "test-stack.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "up"], cwd=REPO, env=env,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    stack = Stack(env=env, process=process)
    try:
        stack.wait_ready(timeout=240)
    except BaseException:
        process.send_signal(signal.SIGINT)
        process.wait(30)
        raise
    yield stack
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
