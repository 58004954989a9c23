"""The real local stack for integration tests: `poststelle up` on test ports with its own state.

One stack per test session (Kafka, Dovecot, ingress, stages, sinks as real processes). Tests talk
to it over SMTP, read Dovecot's maildirs, query analytics, and kill or hold components through the
same supervisor an operator uses.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import smtplib
import subprocess
import sys
import time
import tomllib
import uuid
from collections import Counter
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from pipeline.bus import behind
from pipeline.topology_settings import chain_name
from schemas.events import decode_event

REPO = Path(__file__).resolve().parents[2]
# POSTSTELLE_TEST_BASE moves the session stack (ports and state), so two test runs can share a machine.
# The default lies below Linux's ephemeral port range (32768-60999): a listener there can find its
# port taken by some client connection's source port (it happened once, with the submission port).
SESSION_BASE = int(os.environ.get("POSTSTELLE_TEST_BASE", "29090"))
HOME = REPO / "var" / ("test-stack" if SESSION_BASE == 29090 else f"test-stack-{SESSION_BASE}")



def with_probe(stages: list[str]) -> list[str]:
    """The local config's stages with the test stage `probe` (tests/integration/probe.py) before route."""
    return [*stages[:stages.index("route")], "probe", *stages[stages.index("route"):]]


def without_route(chains: list[list[str]]) -> list[list[str]]:
    """The local config's chains with `route` left out (the probe goes before it): so the test stack runs
    a chain and, alone, `stage:probe` and `stage:route` (the kill -9 tests kill it), both kinds of runner."""
    cut = [[s for s in chain if s != "route"] for chain in chains]
    return [chain for chain in cut if len(chain) > 1]


LOCAL_TOPOLOGY = tomllib.loads((REPO / "deploy/local/poststelle.toml").read_text())["topology"]
LOCAL_STAGES = LOCAL_TOPOLOGY["stages"]
# POSTSTELLE_TEST_UNCHAINED=1: every stage alone, as without `topology.chains`
LOCAL_CHAINS = [] if os.environ.get("POSTSTELLE_TEST_UNCHAINED") else without_route(LOCAL_TOPOLOGY.get("chains", []))
PROBE_TIMEOUT = 3.0  # seconds a record may take in the probe stage (X-Probe-Sleep-Once tests it)


def stack_env(home: Path, base: int) -> dict[str, str]:
    """Settings for a test stack on ports base..base+14 (metrics from base+40), apart from the developer stack's.

    The stack runs the local config's stages plus the test stage `probe` (loaded as a site's own
    stage module would be), which acts only on messages with X-Probe-* header fields."""
    return {
        "PYTHONPATH": str(REPO),  # the probe's module, also for the console script .venv/bin/poststelle
        "POSTSTELLE_TOPOLOGY__STAGE_MODULES": "tests.integration.probe",
        "POSTSTELLE_TOPOLOGY__STAGES": ",".join(with_probe(LOCAL_STAGES)),
        "POSTSTELLE_TOPOLOGY__CHAINS": json.dumps(LOCAL_CHAINS),
        "POSTSTELLE_STAGES__PROBE__TIMEOUT": f"{PROBE_TIMEOUT:g}s",
        "POSTSTELLE_CONFIG": str(REPO / "deploy/local/poststelle.toml"),
        "POSTSTELLE_HOME": str(home),
        "POSTSTELLE_KAFKA__BOOTSTRAP": f"127.0.0.1:{base}",
        "POSTSTELLE_KAFKA__REQUEST_TIMEOUT_MS": "4000",
        "POSTSTELLE_LOCAL__KAFKA_CONTROLLER_PORT": str(base + 1),
        "POSTSTELLE_LOCAL__KAFKA_JARS": str(REPO / "var/kafka/lib"),  # filled by `make kafka-jars`
        "POSTSTELLE_INGRESS__PORT": str(base + 2),
        "POSTSTELLE_INGRESS__PERSIST_TIMEOUT": "6",
        "POSTSTELLE_SINKS__LMTP__PORT": str(base + 3),
        "POSTSTELLE_SINKS__ANALYTICS__QUERY_PORT": str(base + 4),
        "POSTSTELLE_SINKS__SMARTHOST__PORT": str(base + 5),
        "POSTSTELLE_LDAP__PORT": str(base + 6),
        "POSTSTELLE_DNS__PORT": str(base + 7),
        "POSTSTELLE_SUBMISSION__PORT": str(base + 8),
        "POSTSTELLE_SUBMISSION__TLS_PORT": str(base + 9),
        "POSTSTELLE_LOCAL__CLAMD_PORT": str(base + 10),
        "POSTSTELLE_STAGES__VIRUS__ADDRESS": f"127.0.0.1:{base + 10}",
        "POSTSTELLE_WEB__PORT": str(base + 11),  # the quarantine portal
        "POSTSTELLE_DESTINATIONS__STORE2__PORT": str(base + 12),  # the second LMTP store (the same Dovecot)
        "POSTSTELLE_DESTINATIONS__PHYSIK__PORT": str(base + 13),  # the physics department's smtp-sink
        "POSTSTELLE_DESTINATIONS__MX__PORT": str(base + 14),  # the test MX hosts (local.mx_hosts), mx's port
        # each component's /metrics: base+40 upward, a second instance (test_failures) 30 further
        "POSTSTELLE_METRICS__BASE_PORT": str(base + 40),
        "POSTSTELLE_METRICS__INSTANCE_STRIDE": "30",
        "POSTSTELLE_DELIVERY__RETRY_SCHEDULE": "1s,2s",  # the test-only short schedule
        "POSTSTELLE_DELIVERY__LIFETIME": "20s",
        "POSTSTELLE_DELIVERY__DELAY_WARNING": "10s",  # the sender hears of a delay after 10 s, not 4 h
        "POSTSTELLE_CHECKS__GREYLIST__DELAY": "2s",  # the test-only greylisting delay
        "POSTSTELLE_INGRESS__VERDICT_WAIT": "8",  # shorter than the default 20 s: tests hold stages
        "POSTSTELLE_SINKS__ANALYTICS__BATCH_SECONDS": "0.5",
        "POSTSTELLE_SUPERVISOR__RESTART_BACKOFF_MAX": "2",
        "POSTSTELLE_RUNNER__TEMPFAIL_BACKOFF_MAX": "2",
        "POSTSTELLE_LDAP__CACHE_TTL": "5",  # a change in the directory is seen within 5 s, not 60 (test_expand)
    }


SMTP_HOST, SMTP_PORT = "127.0.0.1", SESSION_BASE + 2


@dataclass
class Stack:
    env: dict[str, str]
    process: subprocess.Popen
    home: Path

    @property
    def bootstrap(self) -> str:
        return self.env["POSTSTELLE_KAFKA__BOOTSTRAP"]

    @property
    def smtp_port(self) -> int:
        return int(self.env["POSTSTELLE_INGRESS__PORT"])

    def component_of(self, stage: str) -> str:
        """The component that runs `stage`: its chain's (`chain:NAME`) or its own (`stage:NAME`)."""
        chains = json.loads(self.env["POSTSTELLE_TOPOLOGY__CHAINS"])
        chain = next((c for c in chains if stage in c), None)
        return f"chain:{chain_name(chain)}" if chain else f"stage:{stage}"

    def log_of(self, stage: str) -> Path:
        """The log file of the component that runs `stage`."""
        return self.home / "log" / f"{self.component_of(stage).replace(':', '-')}.log"

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
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                log = (self.home / "up.log").read_text()[-3000:]
                raise AssertionError(f"poststelle up exited with {self.process.returncode}:\n{log}")
            done = self.cli("status", check=False)
            if done.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"stack not ready after {timeout}s:\n{done.stdout}{done.stderr}")
            time.sleep(1.0)

    def hold(self, component: str, timeout: float = 30) -> None:
        """`poststelle stop COMPONENT`, and wait until its process is gone."""
        pid = self.pid_of(component)
        self.cli("stop", component)
        self.wait_for(lambda: self.status()["components"][component]["state"] == "held"
                      and not Path(f"/proc/{pid}").exists(), timeout=timeout, what=f"{component} held down")

    def release(self, component: str, timeout: float = 60) -> None:
        """`poststelle start COMPONENT`, and wait until it is ready again."""
        self.cli("start", component)
        self.wait_for(lambda: self.status()["components"][component]["state"] == "ready", timeout=timeout,
                      what=f"{component} ready again")

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

    def scrape(self, component: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """The component's ``/metrics`` now: (sample name, sorted labels) → value."""
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        from pipeline.cli.components import load_config, metrics_endpoints

        url = metrics_endpoints(load_config(self.env["POSTSTELLE_CONFIG"], environ=self.env))[component]
        reply = httpx.get(url, timeout=10)
        reply.raise_for_status()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(reply.text) for s in family.samples}

    def sql(self, query: str) -> list[list]:
        done = self.cli("sql", "--json", query)
        return orjson.loads(done.stdout)["rows"]


def new_test_id() -> str:
    return uuid.uuid4().hex


def make_message(test_id: str, to: str = "max.mustermann@school.test", subject: str = "test",
                 body: str = "Hallo.\r\n") -> bytes:
    return (f"From: sender@example.org\r\nTo: {to}\r\nSubject: {subject}\r\nX-Test-Id: {test_id}\r\n"
            f"Message-ID: <{test_id}@example.org>\r\n\r\n{body}").encode()


def send(msg: bytes, to: list[str], mail_from: str = "sender@example.org", port: int = SMTP_PORT) -> dict:
    with smtplib.SMTP(SMTP_HOST, port, timeout=30) as client:
        return client.sendmail(mail_from, to, msg)


FULL_BOX = "full.box@school.test"  # a test mailbox whose quota the tests set
# people the test stack adds to its directory (not to the demo LDIF): FULL_BOX, and two accounts
# whose mailboxes are gone (in LDAP, so the ingress accepts them; not in Dovecot, which answers 550)
NO_MAILBOX = ("gone.one@school.test", "gone.two@school.test")
PROBE_LIST = "probe.list@school.test"  # an address the probe stage expands (X-Probe-Expand); no mailbox
TEST_PEOPLE = (FULL_BOX, *NO_MAILBOX, PROBE_LIST)


def add_test_people(env: dict[str, str]) -> None:
    """Add TEST_PEOPLE to the running slapd as the rootdn (idempotent)."""
    import ldap3

    from pipeline.localstack.slapd import ROOT_DN, ROOT_PASSWORD

    server = ldap3.Server("127.0.0.1", port=int(env["POSTSTELLE_LDAP__PORT"]), connect_timeout=5)
    with ldap3.Connection(server, ROOT_DN, ROOT_PASSWORD, auto_bind=True, receive_timeout=5) as conn:
        for address in TEST_PEOPLE:
            uid = address.split("@")[0]
            conn.add(f"uid={uid},ou=people,dc=school,dc=test", ["inetOrgPerson"],
                     {"uid": uid, "cn": uid, "sn": uid, "mail": address, "employeeType": "student"})
            if conn.result["result"] not in (0, 68):  # 68: already exists
                raise AssertionError(f"adding {address}: {conn.result}")


def write_users(home: Path, quota: str) -> None:
    """The demo mailboxes plus FULL_BOX with the given quota; Dovecot re-reads the file on change."""
    demo = (REPO / "deploy/local/dovecot/users").read_text()
    line = f"{FULL_BOX}:*::::::userdb_quota_rule=*:storage={quota}\n"
    path = home / "users"
    tmp = home / "users.tmp"
    tmp.write_text(demo + line)
    os.replace(tmp, path)


def launch(home: Path, base: int, extra_env: dict[str, str] | None = None) -> Stack:
    """Start `poststelle up` with a fresh state directory and wait until every component is ready.

    `extra_env`: further POSTSTELLE_ settings, for a test module's own stack with a different config."""
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    write_users(home, quota="1K")
    env = {**os.environ, **stack_env(home, base), "POSTSTELLE_LOCAL__DOVECOT_USERS": str(home / "users"),
           **(extra_env or {})}
    with open(home / "up.log", "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "up"], cwd=REPO, env=env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    stack = Stack(env=env, process=process, home=home)
    try:
        stack.wait_ready(timeout=240)
        add_test_people(env)
    except BaseException:
        stop(stack)
        raise
    return stack


def stop(stack: Stack, timeout: float = 30) -> float:
    """Ctrl-C the supervisor; returns how long it took to exit."""
    started = time.monotonic()
    if stack.process.poll() is None:
        stack.process.send_signal(signal.SIGINT)
        try:
            stack.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(stack.process.pid, signal.SIGKILL)
            stack.process.wait()
    return time.monotonic() - started


@pytest.fixture(scope="session")
def stack() -> Stack:
    stack = launch(HOME, SESSION_BASE)
    yield stack
    stop(stack)


TRACE_FIELDS = (b"return-path", b"delivered-to", b"received", b"authentication-results", b"x-spam-score",
                b"x-spam-status", b"x-spam-flag")


def strip_trace(raw: bytes) -> tuple[list[bytes], bytes]:
    """Split a delivered message into its leading trace header fields and the rest (LF endings).

    Trace fields: those the ingress, Dovecot and the stages put on top (Received, Return-Path,
    Delivered-To, the auth stage's Authentication-Results, RFC 8601 section 5, and the spam stage's
    score fields)."""
    lines = raw.replace(b"\r\n", b"\n").split(b"\n")
    trace: list[bytes] = []
    i = 0
    while i < len(lines):
        name = lines[i].split(b":", 1)[0].lower()
        if name not in TRACE_FIELDS:
            break
        field_lines = [lines[i]]
        i += 1
        while i < len(lines) and lines[i][:1] in (b" ", b"\t"):
            field_lines.append(lines[i])
            i += 1
        trace.append(b"\n".join(field_lines))
    return trace, b"\n".join(lines[i:])


class BulkSender:
    """Sends messages over a few concurrent SMTP connections, retrying 4xx and dropped connections
    like a real MTA would, and records which were accepted (250)."""

    def __init__(self, port: int, threads: int = 8) -> None:
        self.port, self.threads = port, threads
        self.accepted: list[str] = []
        self.failed: dict[str, str] = {}
        self.retries = 0
        self._lock = __import__("threading").Lock()

    def _send_all(self, items: list[tuple[str, str, bytes]], deadline: float) -> None:
        client = None
        for test_id, rcpt, msg in items:
            while True:
                if time.monotonic() > deadline:
                    self.failed[test_id] = "deadline"
                    break
                try:
                    if client is None:
                        client = smtplib.SMTP(SMTP_HOST, self.port, timeout=30)
                    client.sendmail("sender@example.org", [rcpt], msg)
                    with self._lock:
                        self.accepted.append(test_id)
                    break
                except smtplib.SMTPResponseException as exc:
                    if exc.smtp_code >= 500:
                        self.failed[test_id] = f"{exc.smtp_code} {exc.smtp_error!r}"
                        break
                    self.retries += 1
                except (smtplib.SMTPServerDisconnected, OSError):
                    self.retries += 1
                    client = None
                    time.sleep(0.2)
                except smtplib.SMTPRecipientsRefused as exc:
                    self.failed[test_id] = repr(exc.recipients)
                    break
        if client is not None:
            try:
                client.quit()
            except (smtplib.SMTPException, OSError):
                pass

    def run(self, items: list[tuple[str, str, bytes]], timeout: float = 300) -> None:
        import threading

        deadline = time.monotonic() + timeout
        chunks = [items[i::self.threads] for i in range(self.threads)]
        workers = [threading.Thread(target=self._send_all, args=(c, deadline)) for c in chunks]
        for w in workers:
            w.start()
        for w in workers:
            w.join()


def read_all(stack, topic: str, wanted=lambda event: True, timeout: float = 5.0) -> list:
    """Every event on `topic` so far that `wanted` accepts (read from the beginning)."""

    async def scan() -> list:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=stack.bootstrap, auto_offset_reset="earliest",
                                    enable_auto_commit=False, isolation_level="read_committed")
        await consumer.start()
        try:
            found, ends = [], await consumer.end_offsets(list(consumer.assignment()) or await _assigned(consumer))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and await behind(consumer, ends):
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    found += [e for r in records if wanted(e := decode_event(r.value))]
            return found
        finally:
            await consumer.stop()

    return asyncio.run(scan())


async def _assigned(consumer: AIOKafkaConsumer) -> list:
    while not consumer.assignment():
        await asyncio.sleep(0.1)
    return list(consumer.assignment())


@dataclass
class DataReply:
    code: int
    text: str
    seconds: float  # from the end of DATA to the reply

    @property
    def message_id(self) -> str:
        return self.text.rsplit(" ", 1)[1] if self.code == 250 else ""


def send_data(stack, msg: bytes, to: list[str], mail_from: str = "sender@example.org") -> DataReply:
    """One transaction; the DATA reply and how long it took (every RCPT must be accepted)."""
    with smtplib.SMTP(SMTP_HOST, stack.smtp_port, timeout=60) as client:
        client.ehlo("client.test")
        client.mail(mail_from)
        for rcpt in to:
            code, reply = client.rcpt(rcpt)
            assert code == 250, (rcpt, code, reply)
        started = time.monotonic()
        code, reply = client.data(msg)
    return DataReply(code, reply.decode(), time.monotonic() - started)


def mail_with(test_id: str, to: list[str], fields: dict[str, str], subject: str = "test") -> bytes:
    """A small message with extra header fields (e.g. the probe stage's X-Probe-*)."""
    extra = "".join(f"{name}: {value}\r\n" for name, value in fields.items())
    return (f"From: sender@example.org\r\nTo: {', '.join(to)}\r\nSubject: {subject}\r\nX-Test-Id: {test_id}\r\n"
            f"Message-ID: <{test_id}@example.org>\r\n{extra}\r\nHallo.\r\n").encode()
