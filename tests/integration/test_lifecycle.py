"""`poststelle up` → `poststelle status --wait` → Ctrl-C: everything stops, nothing is left behind."""
from __future__ import annotations

import os

from pipeline.cli.components import components, load_config
from pipeline.localstack import local_services
from tests.integration.conftest import REPO, SESSION_BASE, launch, stop


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie is gone for our purposes
        return fh.read().split(")")[-1].split()[0] != "Z"


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().split(")")[-1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry))
    return members


def test_up_status_and_ctrl_c_leave_no_process_behind():
    stack = launch(REPO / "var" / f"test-lifecycle-{SESSION_BASE + 100}", SESSION_BASE + 100)
    try:
        status = stack.status()["components"]
        settings = load_config(environ=stack.env)
        assert set(status) == {*(s.name for s in local_services(settings)), *(c.name for c in components(settings))}
        assert {"kafka", "ingress", "sink:lmtp", "sink:smarthost", "sink:analytics", "digest", "web"} <= set(status)
        assert all(c["state"] == "ready" for c in status.values())
        stack.wait_for(lambda: f"poststelle ready: smtp 127.0.0.1:{SESSION_BASE + 102}" in (stack.home / "up.log").read_text(),
                       timeout=10, what="the ready line")
        pids = [c["pid"] for c in status.values()]
    finally:
        took = stop(stack)

    assert stack.process.returncode == 0
    assert took < 10.0, f"stopping took {took:.1f}s"
    left = [p for pid in pids for p in _group_members(pid)] + [p for p in pids if _alive(p)]
    assert left == [], f"processes left behind: {left}"
    assert stack.cli("status", check=False).returncode == 1
