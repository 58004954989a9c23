"""`make unit` needs no server: run it with the servers' binaries hidden, as on a machine without them.

In a mount namespace of its own (`unshare -m`, root only), /dev/null is bound over every server
binary the local stack uses, so they are not there for `shutil.which`, for the tests' fixtures, or
for anything a test would start by mistake. A test that needs a server but lacks its marker fails
here, not on a developer's laptop.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.integration.conftest import REPO

SERVERS = ["/usr/sbin/nsd", "/usr/sbin/slapd", "/usr/sbin/clamd", "/usr/sbin/dovecot", "/usr/sbin/smtp-sink",
           "/usr/sbin/postfix", "/usr/bin/java", "/usr/bin/mvn", "/usr/bin/swaks", "/usr/sbin/openldap",
           "/usr/bin/ldapsearch"]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare(1)")
def test_make_unit_passes_without_any_server_binary():
    hide = "; ".join(f"[ -e {path} ] && mount --bind /dev/null {path}" for path in SERVERS)
    marker = "not (integration or kafka or slapd or nsd or clamd or dovecot)"
    assert marker in (REPO / "Makefile").read_text()  # the same selection as `make unit`
    script = (f"{hide}; for b in nsd slapd clamd dovecot java; do which $b >/dev/null 2>&1 && exit 99; done; "
              f"exec {sys.executable} -m pytest -q -x -p no:cacheprovider -m '{marker}'")
    done = subprocess.run(["unshare", "-m", "bash", "-c", script], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode != 99, "the server binaries were not hidden"
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "error" not in done.stdout.splitlines()[-1]
