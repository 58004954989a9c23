"""The local NSD from pipeline.localstack.nsd, run for real on the zones in deploy/local/dns/.

Needs the Debian package nsd. One NSD serves the query tests (module fixture, free port, temp
state dir); the shutdown test starts its own. Queries go straight to NSD with dnspython, as the
SMTP-time checks will: NSD is authoritative only, so every name asked about lies in its zones.
"""
from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.resolver
import dns.reversename
import pytest

from pipeline.localstack import ServiceSpec
from pipeline.localstack.nsd import ZONES_DIR, NsdSetupError, nsd_service, zone_files

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("nsd", path="/usr/sbin:/usr/bin") is None, reason="nsd not installed"),
]

HOST = "127.0.0.1"
DKIM_PRIVATE = ZONES_DIR / "keys/good.test.sel.private"


def _free_port() -> int:
    """A port free for both UDP and TCP (NSD binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((HOST, 0))
            port = udp.getsockname()[1]
            with socket.socket() as tcp:
                try:
                    tcp.bind((HOST, port))
                except OSError:
                    continue
                return port
    raise AssertionError("no port free for both UDP and TCP")


class Running:
    """A started NSD: its spec, process, log and how long it took to answer its first query."""

    def __init__(self, spec: ServiceSpec, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.spec = spec
        self.proc = proc
        self.log = log
        self.started = time.monotonic()
        self.tcp_ready_after = 0.0
        self.answering_after = 0.0

    @property
    def port(self) -> int:
        return self.spec.ready_port[1]  # type: ignore[index]

    def resolver(self) -> dns.resolver.Resolver:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [HOST]
        resolver.port = self.port
        resolver.lifetime = 5.0
        resolver.cache = None
        return resolver

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Like the supervisor: until the TCP port accepts; then until a query is answered."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"nsd exited early with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"nsd did not listen on {HOST}:{self.port} within {timeout}s") from None
                time.sleep(0.02)
        self.tcp_ready_after = time.monotonic() - self.started
        # queries sent now wait in the socket until NSD has read its zones
        query = dns.message.make_query("test.", "SOA")
        dns.query.udp(query, HOST, port=self.port, timeout=max(deadline - time.monotonic(), 0.1))
        self.answering_after = time.monotonic() - self.started

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
            raise AssertionError(f"nsd did not exit within {timeout}s of SIGTERM") from None
        return time.monotonic() - started

    def kill(self) -> None:
        """Whatever is left of NSD's process group (main, xfrd, server)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


def _start(state_home: Path) -> Running:
    port = _free_port()
    spec = nsd_service(state_home, HOST, port, ZONES_DIR)
    assert spec.argv[1:3] == ["-d", "-c"]
    assert spec.ready_port == (HOST, port)
    log = state_home / "nsd.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(spec.argv, cwd=spec.cwd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT,
                                env={**spec.env, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                                start_new_session=True)
    return Running(spec, proc, log)


def _started(state_home: Path) -> Iterator[Running]:
    running = _start(state_home)
    try:
        running.wait_ready()
        yield running
    finally:
        try:
            running.stop()
        except AssertionError:
            pass
        finally:
            running.kill()
        print(f"--- {running.log}\n" + running.log.read_text(errors="replace"))


@pytest.fixture(scope="module")
def nsd() -> Iterator[Running]:
    home = Path(tempfile.mkdtemp(prefix="pst-nsd-"))
    try:
        yield from _started(home)
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def state_home() -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix="pst-nsd-"))
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _a(resolver: dns.resolver.Resolver, name: str) -> set[str] | None:
    """The A records of `name`, or None for NXDOMAIN."""
    try:
        return {r.address for r in resolver.resolve(name, "A")}
    except dns.resolver.NXDOMAIN:
        return None


def _txt(resolver: dns.resolver.Resolver, name: str) -> list[str]:
    return [b"".join(r.strings).decode() for r in resolver.resolve(name, "TXT")]


def _rcode(nsd: Running, name: str, rdtype: str = "A") -> tuple[str, bool]:
    answer = dns.query.udp(dns.message.make_query(name, rdtype), HOST, port=nsd.port, timeout=5)
    return dns.rcode.to_text(answer.rcode()), bool(answer.flags & dns.flags.AA)


def _dnsbl_name(ip: str, zone: str) -> str:
    return ".".join(reversed(ip.split("."))) + "." + zone


# --- the rendered config ----------------------------------------------------------------------

def test_one_zone_per_file_and_startup_time(nsd: Running) -> None:
    conf = (nsd.spec.cwd / "nsd.conf").read_text()  # type: ignore[operator]
    zones = zone_files(ZONES_DIR)
    assert set(zones) == {"test", "zen.dnsbl.test", "bl.dnsbl.test", "dbl.rhsbl.test", "multi.uribl.test",
                          "127.in-addr.arpa", "localhost"}
    assert conf.count("zone:\n") == len(zones)
    assert f"ip-address: {HOST}@{nsd.port}" in conf
    assert 'database: ""' in conf
    assert nsd.answering_after < 5.0
    print(f"NSD listened after {nsd.tcp_ready_after:.3f}s, answered after {nsd.answering_after:.3f}s")


def test_broken_zone_is_rejected_before_start(state_home: Path) -> None:
    zones = state_home / "zones"
    zones.mkdir()
    shutil.copy(ZONES_DIR / "localhost.zone", zones)
    (zones / "broken.test.zone").write_text("$ORIGIN broken.test.\n@ IN A 127.0.0.300\n")
    with pytest.raises(NsdSetupError, match="broken.test"):
        nsd_service(state_home, HOST, _free_port(), zones)
    with pytest.raises(NsdSetupError, match="no \\*.zone files"):
        nsd_service(state_home, HOST, _free_port(), state_home)


# --- DNSBL / RHSBL / URIBL --------------------------------------------------------------------

@pytest.mark.parametrize(("ip", "zone", "expected"), [
    ("127.0.0.2", "zen.dnsbl.test", {"127.0.0.2"}),           # the conventional test entry
    ("127.0.0.2", "bl.dnsbl.test", {"127.0.0.2"}),
    ("127.0.1.66", "zen.dnsbl.test", {"127.0.0.2"}),          # SBL-like
    ("127.0.1.67", "zen.dnsbl.test", {"127.0.0.10", "127.0.0.11"}),  # PBL-like
    ("127.0.1.68", "zen.dnsbl.test", None),
    ("127.0.1.68", "bl.dnsbl.test", {"127.0.0.2"}),
    ("127.0.1.69", "zen.dnsbl.test", {"127.0.0.2"}),          # on both lists
    ("127.0.1.69", "bl.dnsbl.test", {"127.0.0.2"}),
    ("127.0.0.1", "zen.dnsbl.test", None),                    # never listed (RFC 5782)
    ("127.0.0.1", "bl.dnsbl.test", None),
    ("127.0.2.10", "zen.dnsbl.test", None),                   # the good remote MTA
    ("127.0.1.66", "bl.dnsbl.test", None),
])
def test_dnsbl(nsd: Running, ip: str, zone: str, expected: set[str] | None) -> None:
    assert _a(nsd.resolver(), _dnsbl_name(ip, zone)) == expected


def test_dnsbl_reason_and_authoritative_nxdomain(nsd: Running) -> None:
    resolver = nsd.resolver()
    assert "PBL-like" in _txt(resolver, _dnsbl_name("127.0.1.67", "zen.dnsbl.test"))[0]
    assert _rcode(nsd, _dnsbl_name("127.0.0.3", "zen.dnsbl.test")) == ("NXDOMAIN", True)


@pytest.mark.parametrize(("domain", "expected"), [
    ("spammer.test", {"127.0.1.2"}),
    ("test", {"127.0.1.2"}),                  # the conventional test entry
    ("phish.test", {"127.0.1.4"}),
    ("good.test", None),
    ("invalid", None),
])
def test_rhsbl(nsd: Running, domain: str, expected: set[str] | None) -> None:
    assert _a(nsd.resolver(), f"{domain}.dbl.rhsbl.test") == expected


@pytest.mark.parametrize(("domain", "expected"), [
    ("bad-link.test", {"127.0.0.2"}),
    ("grey-link.test", {"127.0.0.4"}),
    ("good.test", None),
])
def test_uribl(nsd: Running, domain: str, expected: set[str] | None) -> None:
    assert _a(nsd.resolver(), f"{domain}.multi.uribl.test") == expected


# --- reverse DNS and forward confirmation -----------------------------------------------------

def _fcrdns(resolver: dns.resolver.Resolver, ip: str) -> tuple[str | None, bool]:
    """(PTR name or None, whether some PTR name's A records contain `ip`)."""
    try:
        names = [r.target.to_text() for r in resolver.resolve(dns.reversename.from_address(ip), "PTR")]
    except dns.resolver.NXDOMAIN:
        return None, False
    confirmed = any(ip in (_a(resolver, name) or set()) for name in names)
    return names[0], confirmed


@pytest.mark.parametrize(("ip", "ptr", "confirmed"), [
    ("127.0.2.10", "mx.good.test.", True),
    ("127.0.2.11", "mx.mismatch.test.", False),   # its A is 127.0.2.99
    ("127.0.2.12", None, False),                  # no PTR
    ("127.0.2.13", "mx.dangling.test.", False),   # the PTR name does not exist
    ("127.0.2.20", "mx.ext.test.", True),
    ("127.0.0.1", "localhost.", True),
    ("127.0.1.66", "sbl.listed.test.", True),
    ("127.0.1.67", "pbl.listed.test.", True),
    ("127.0.1.68", "bl.listed.test.", True),
    ("127.0.1.69", "both.listed.test.", True),
    ("127.0.2.99", None, False),
])
def test_ptr_and_forward_confirmation(nsd: Running, ip: str, ptr: str | None, confirmed: bool) -> None:
    assert _fcrdns(nsd.resolver(), ip) == (ptr, confirmed)


# --- sender domains ---------------------------------------------------------------------------

def _mx(resolver: dns.resolver.Resolver, domain: str) -> list[tuple[int, str]] | None:
    """MX records sorted, [] for no MX (NOERROR, no data), None for NXDOMAIN."""
    try:
        return sorted((r.preference, r.exchange.to_text()) for r in resolver.resolve(domain, "MX"))
    except dns.resolver.NoAnswer:
        return []
    except dns.resolver.NXDOMAIN:
        return None


def test_sender_domains(nsd: Running) -> None:
    resolver = nsd.resolver()
    assert _mx(resolver, "good.test") == [(10, "mx.good.test.")]
    assert _a(resolver, "good.test") == {"127.0.2.10"}
    assert _a(resolver, "mx.good.test") == {"127.0.2.10"}
    assert _mx(resolver, "mailonly.test") == []
    assert _a(resolver, "mailonly.test") == {"127.0.2.21"}
    assert _mx(resolver, "ext.test") == [(10, "mx.ext.test.")]
    assert _a(resolver, "mx.ext.test") == {"127.0.2.20"}
    assert _mx(resolver, "school.test") == [(10, "mx.school.test.")]
    assert _mx(resolver, "nullmx.test") == [(0, ".")]
    assert _mx(resolver, "noaddress.test") == []
    with pytest.raises(dns.resolver.NoAnswer):
        resolver.resolve("noaddress.test", "A")
    # the same over TCP
    answer = resolver.resolve("good.test", "MX", tcp=True)
    assert [r.exchange.to_text() for r in answer] == ["mx.good.test."]


@pytest.mark.parametrize("name", ["nonexistent.test", "mx.dangling.test", "www.good.test"])
def test_unknown_test_names_are_nxdomain(nsd: Running, name: str) -> None:
    assert _mx(nsd.resolver(), name) is None
    assert _rcode(nsd, name) == ("NXDOMAIN", True)


def test_names_outside_the_zones_are_refused(nsd: Running) -> None:
    """NSD is no resolver: a check must not ask it about real domains."""
    assert _rcode(nsd, "example.org")[0] == "REFUSED"


# --- SPF, DKIM, DMARC -------------------------------------------------------------------------

def test_spf(nsd: Running) -> None:
    resolver = nsd.resolver()
    assert _txt(resolver, "good.test") == ["v=spf1 ip4:127.0.2.10 -all"]
    assert _txt(resolver, "quarantine.test") == ["v=spf1 ip4:127.0.2.30 -all"]
    with pytest.raises(dns.resolver.NoAnswer):
        resolver.resolve("ext.test", "TXT")


def test_dkim_key_matches_the_private_key(nsd: Running) -> None:
    (record,) = _txt(nsd.resolver(), "sel._domainkey.good.test")
    tags = dict(part.strip().split("=", 1) for part in record.split(";") if part.strip())
    assert tags["v"] == "DKIM1" and tags["k"] == "rsa"
    public_der = subprocess.run(["openssl", "rsa", "-in", str(DKIM_PRIVATE), "-pubout", "-outform", "DER"],
                                capture_output=True, check=True).stdout
    assert base64.b64decode(tags["p"]) == public_der


def test_dmarc(nsd: Running) -> None:
    resolver = nsd.resolver()
    (good,) = _txt(resolver, "_dmarc.good.test")
    (quarantine,) = _txt(resolver, "_dmarc.quarantine.test")
    assert good.startswith("v=DMARC1;") and "p=reject" in good
    assert quarantine.startswith("v=DMARC1;") and "p=quarantine" in quarantine
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver.resolve("_dmarc.ext.test", "TXT")


# --- lifecycle --------------------------------------------------------------------------------

def test_sigterm_stops_nsd(state_home: Path) -> None:
    started = _started(state_home)
    running = next(started)
    try:
        assert _a(running.resolver(), "mx.good.test") == {"127.0.2.10"}
        children = subprocess.run(["pgrep", "-g", str(running.proc.pid)], capture_output=True, text=True)
        assert len(children.stdout.split()) >= 2  # main plus its server (and xfrd)
        took = running.stop(timeout=10.0)
        assert took < 10.0
        print(f"NSD stopped {took:.3f}s after SIGTERM")
        assert running.proc.returncode == 0
        # the whole process group is gone, not only the main process
        deadline = time.monotonic() + 5
        while subprocess.run(["pgrep", "-g", str(running.proc.pid)], capture_output=True).returncode == 0:
            assert time.monotonic() < deadline, "NSD children outlived the main process"
            time.sleep(0.05)
        with socket.socket() as probe:
            assert probe.connect_ex((HOST, running.port)) != 0
    finally:
        started.close()
