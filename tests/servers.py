"""The real daemons tests talk to, started per test session: NSD (DNS) and slapd (LDAP).

The fixtures that hand them out are in tests/conftest.py; tests that use them are marked `nsd` or
`slapd` there, so `make unit` can leave them out on a machine without the servers.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from pipeline.clients.directory import Directory
from pipeline.clients.dns import Resolver, UdpTcpTransport
from pipeline.localstack.nsd import ZONES_DIR, nsd_service
from pipeline.localstack.slapd import LDIF, slapd_service

# ---- NSD, for the DNS checks (dnsbl, fcrdns, sender_domain, rhsbl) --------------------------------
# One real NSD per test session serves deploy/local/dns on a free port from a temp state dir
# (pipeline.localstack.nsd renders and checks its config); `dead_resolver` asks a port where
# nothing listens.

NSD_HOST = "127.0.0.1"
NSD_INSTALLED = shutil.which("nsd", path="/usr/sbin:/usr/bin") is not None


def free_udp_tcp_port() -> int:
    """A port free for both UDP and TCP (NSD binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((NSD_HOST, 0))
            port = udp.getsockname()[1]
            with socket.socket() as tcp:
                try:
                    tcp.bind((NSD_HOST, port))
                except OSError:
                    continue
                return port
    raise AssertionError("no port free for both UDP and TCP")


@dataclass
class NsdServer:
    """A running NSD: where it listens, and resolvers pointed at it."""

    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def resolver(self, timeout: float = 2.0, **options) -> Resolver:
        return Resolver(NSD_HOST, self.port, timeout, **options)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL whatever is left of NSD's process group (main, xfrd, server)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


def start_nsd(state_home: Path, timeout: float = 15.0) -> NsdServer:
    """Start NSD on a free port in its own session; return once it answers a query."""
    port = free_udp_tcp_port()
    spec = nsd_service(state_home, NSD_HOST, port, ZONES_DIR)
    log = state_home / "nsd.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(spec.argv, cwd=spec.cwd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env={**spec.env, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                                start_new_session=True)
    server = NsdServer(port, proc, log)
    deadline = time.monotonic() + timeout
    query = dns.message.make_query("test.", "SOA")
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"nsd exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        try:
            dns.query.udp(query, NSD_HOST, port=port, timeout=0.2)
            return server
        except (OSError, dns.exception.DNSException):
            if time.monotonic() > deadline:
                server.stop()
                raise AssertionError(f"nsd did not answer on {NSD_HOST}:{port} within {timeout}s") from None


class FilteredTransport:
    """Forwards queries to NSD, but answers SERVFAIL for the given "name/TYPE" questions; records all."""

    def __init__(self, port: int, servfail: frozenset[str] = frozenset()) -> None:
        self.forward = UdpTcpTransport(NSD_HOST, port)
        self.servfail = servfail
        self.asked: list[str] = []

    async def __call__(self, request: dns.message.Message, timeout: float) -> dns.message.Message:
        question = request.question[0]
        asked = f"{question.name.to_text(omit_final_dot=True)}/{dns.rdatatype.to_text(question.rdtype)}"
        self.asked.append(asked)
        if asked in self.servfail:
            response = dns.message.make_response(request)
            response.set_rcode(dns.rcode.SERVFAIL)
            return response
        return await self.forward(request, timeout)


# ---- slapd: pipeline.clients.directory and the LDAP checks (recipient, group_policy, sender_login) --------
# One real slapd with the demo school (deploy/local/directory.ldif) per test session for tests that
# only read; `own_slapd` gives a test its own slapd to stop, restart or change.

SLAPD_HOST = "127.0.0.1"
SLAPD_INSTALLED = shutil.which("slapd", path="/usr/sbin:/usr/bin") is not None


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind((SLAPD_HOST, 0))
        return s.getsockname()[1]


@dataclass
class SlapdServer:
    """A running slapd with the demo school: where it listens, and directories pointed at it."""

    port: int
    state_home: Path
    proc: subprocess.Popen[bytes]

    def directory(self, timeout: float = 2.0, **options) -> Directory:
        return Directory(SLAPD_HOST, self.port, "dc=school,dc=test", timeout, **options)

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM, wait; SIGKILL the process group when it does not exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def restart(self) -> None:
        """Start again on the same port with the same database."""
        self.stop()
        self.proc = _spawn_slapd(self.state_home, self.port)


def _spawn_slapd(state_home: Path, port: int, timeout: float = 15.0, ldif: Path = LDIF) -> subprocess.Popen[bytes]:
    spec = slapd_service(state_home, SLAPD_HOST, port, ldif)
    log = state_home / "slapd.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(spec.argv, cwd=spec.cwd, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, env={**spec.env, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                                 start_new_session=True)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"slapd exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        try:
            with socket.create_connection((SLAPD_HOST, port), timeout=0.5) as probe:
                if probe.getsockname() != probe.getpeername():  # not connected to itself
                    return proc
        except OSError:
            pass
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise AssertionError(f"slapd did not listen on {SLAPD_HOST}:{port} within {timeout}s")
        time.sleep(0.02)


def start_slapd(state_home: Path, ldif: Path = LDIF) -> SlapdServer:
    """Start slapd on a free port with `ldif` loaded (the demo school by default); return once it listens."""
    port = _free_tcp_port()
    return SlapdServer(port, state_home, _spawn_slapd(state_home, port, ldif=ldif))


def slapd_in_temp_dir() -> Iterator[SlapdServer]:
    if not SLAPD_INSTALLED:
        pytest.skip("slapd not installed (apt-get install slapd)")
    home = Path(tempfile.mkdtemp(prefix="pst-ldap-"))
    server = start_slapd(home)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)
