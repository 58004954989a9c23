"""Shared fixtures and markers for the whole suite.

- The built-in stages and checks are registered once (as the composition root does for a process).
- The real daemons unit tests of the DNS and LDAP clients and checks talk to: one NSD and one slapd
  per test session (`tests/servers.py` starts them).
- Markers say what a test needs: a test using the `nsd`/`resolver` fixtures is marked `nsd`, one
  using `slapd`/`own_slapd`/`directory` is marked `slapd`; modules mark their own `kafka`,
  `clamd` or `dovecot` tests. Everything under tests/integration/ runs against the whole local
  stack and is marked `integration` (and so needs every server). `make unit` leaves all of them
  out, so it runs on a machine without any server binaries.
"""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.cli.components import load_builtins
from pipeline.clients.dns import Resolver
from tests.servers import (
    NSD_HOST,
    NSD_INSTALLED,
    NsdServer,
    SlapdServer,
    free_udp_tcp_port,
    slapd_in_temp_dir,
    start_nsd,
)

load_builtins()

SERVER_MARKERS = ("kafka", "slapd", "nsd", "clamd", "dovecot")
# fixtures that start a server, and the marker a test using them gets
FIXTURE_MARKERS = {"nsd": "nsd", "resolver": "nsd", "slapd": "slapd", "own_slapd": "slapd", "directory": "slapd"}


def pytest_configure(config: pytest.Config) -> None:
    for name in SERVER_MARKERS:
        config.addinivalue_line("markers", f"{name}: needs a real {name} (started by the test or its fixture)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.path):
            item.add_marker(pytest.mark.integration)
            for name in SERVER_MARKERS:
                item.add_marker(name)
        for fixture in getattr(item, "fixturenames", ()):
            if fixture in FIXTURE_MARKERS:
                item.add_marker(FIXTURE_MARKERS[fixture])


@pytest.fixture(scope="session")
def nsd() -> Iterator[NsdServer]:
    """One real NSD per test session, serving deploy/local/dns on a free port."""
    if not NSD_INSTALLED:
        pytest.skip("nsd not installed (apt-get install nsd)")
    home = Path(tempfile.mkdtemp(prefix="pst-nsd-"))
    server = start_nsd(home)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def resolver(nsd: NsdServer) -> Resolver:
    """A resolver asking the session's NSD (a fresh cache for every test)."""
    return nsd.resolver()


@pytest.fixture
def dead_resolver() -> Resolver:
    """A resolver asking a port where nothing listens: every lookup times out, quickly."""
    return Resolver(NSD_HOST, free_udp_tcp_port(), timeout=0.3)


@pytest.fixture(scope="session")
def slapd() -> Iterator[SlapdServer]:
    """The session's slapd with the demo school: read it, never change or stop it."""
    yield from slapd_in_temp_dir()


@pytest.fixture
def own_slapd() -> Iterator[SlapdServer]:
    """A slapd for this test alone, to stop, restart or change."""
    yield from slapd_in_temp_dir()


@pytest.fixture
async def directory(slapd: SlapdServer):
    """A Directory on the session's slapd with an empty cache, closed after the test."""
    found = slapd.directory()
    await found.start()
    yield found
    await found.close()
