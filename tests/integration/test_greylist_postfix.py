"""Greylisting against a real MTA: a private Postfix relays to the ingress from 127.0.2.10.

Postfix (Debian's, no system instance: its own main.cf, master.cf and queue under the test stack's
home) listens on a loopback port, relays everything to the ingress with `smtp_bind_address =
127.0.2.10` (mx.good.test: forward-confirmed, listed nowhere, not allow-listed), and retries
deferred mail after 1-2 s. The first attempt gets `451 4.7.1` from greylisting; Postfix's own
retry after the test stack's 2 s delay passes and the message is delivered. The analytics then
show one delay and one pass for that sender. Postfix's master(8) must run as root.
"""
from __future__ import annotations

import os
import shutil
import smtplib
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import make_message, new_test_id

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("postfix", path="/usr/sbin") is None,
                                reason="a private Postfix instance needs root and the postfix package")

RELAY_IP = "127.0.2.10"  # mx.good.test


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_config(root: Path, port: int, ingress_port: int) -> None:
    (root / "etc").mkdir(parents=True)
    for sub in ("spool", "data"):
        (root / sub).mkdir()
    shutil.chown(root / "data", "postfix")
    (root / "etc/main.cf").write_text(f"""\
compatibility_level = 3.6
queue_directory = {root}/spool
data_directory = {root}/data
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
myhostname = relay.good.test
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
mynetworks = 127.0.0.0/8
relay_domains = school.test
relay_transport = relay:[127.0.0.1]:{ingress_port}
smtp_bind_address = {RELAY_IP}
smtp_tls_security_level = none
alias_maps =
alias_database =
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
""")
    (root / "etc/master.cf").write_text(f"""\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n -  0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n -  - trivial-rewrite
bounce    unix  - - n -  0 bounce
defer     unix  - - n -  0 bounce
trace     unix  - - n -  0 bounce
verify    unix  - - n -  1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -  - proxymap
smtp      unix  - - n -  - smtp
relay     unix  - - n -  - smtp
showq     unix  n - n -  - showq
error     unix  - - n -  - error
retry     unix  - - n -  - error
discard   unix  - - n -  - discard
anvil     unix  - - n -  1 anvil
scache    unix  - - n -  1 scache
postlog   unix-dgram n - n - 1 postlogd
""")


@pytest.fixture
def postfix(stack):
    root = stack.home / "postfix-relay"
    shutil.rmtree(root, ignore_errors=True)
    port = _free_port()
    _write_config(root, port, stack.smtp_port)
    conf = ["-c", str(root / "etc")]
    subprocess.run(["postfix", *conf, "check"], capture_output=True, timeout=60)
    subprocess.run(["postfix", *conf, "start"], capture_output=True, timeout=60, check=True)
    try:
        stack.wait_for(lambda: _accepts(port), timeout=30, what="the private Postfix")
        yield root, port
    finally:
        subprocess.run(["postfix", *conf, "stop"], capture_output=True, timeout=60)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_postfix_is_greylisted_then_delivers_on_its_own_retry(stack, postfix):
    root, port = postfix
    test_id = new_test_id()
    sender, to = f"list-{test_id[:8]}@good.test", "lena.mueller@school.test"
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:  # hand the message to Postfix
        assert client.sendmail(sender, [to], make_message(test_id, to=to)) == {}
    started = time.monotonic()
    flushed = []

    def delivered() -> bool:
        # Under load, Postfix's qmgr can log "skipped, still being delivered" for the deferred message
        # and then not schedule it again within a minute (seen once in a full `make test`): after 15 s
        # of silence, one queue run (`postqueue -f`, Postfix retrying the same message) takes its place.
        if not flushed and time.monotonic() - started > 15:
            flushed.append(subprocess.run(["postqueue", "-c", str(root / "etc"), "-f"], capture_output=True,
                                          timeout=30))
        return bool(stack.test_ids(to)[test_id])

    stack.wait_for(delivered, timeout=60, interval=0.5, what="Postfix's retry to be delivered")
    assert time.monotonic() - started >= 2.0  # not before the greylisting delay
    log = (root / "maillog").read_text()
    assert "451 4.7.1" in log and "status=deferred" in log and "status=sent" in log, log[-2000:]

    def decisions():
        rows = stack.sql("SELECT verdict FROM poststelle.events WHERE type = 'smtp_check' "
                         f"AND check_name = 'greylist' AND sender = '{sender}' ORDER BY time")
        verdicts = [r[0] for r in rows]
        return verdicts if verdicts[-1:] == ["passed_after_retry"] else None

    # one delay, then the pass; Postfix may knock once more before the delay is over ("too_early")
    verdicts = stack.wait_for(decisions, timeout=30, what="the greylisting rows")
    assert verdicts[0] == "delayed" and verdicts[-1] == "passed_after_retry"
    assert set(verdicts[1:-1]) <= {"too_early"}
    assert verdicts.count("delayed") == 1 and verdicts.count("passed_after_retry") == 1
    assert stack.test_ids(to)[test_id] == 1
