"""The components' event loop (pipeline/eventloop.py)."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from pipeline import eventloop


async def _loop_class() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_components_run_on_uvloop_unless_told_otherwise(monkeypatch) -> None:
    monkeypatch.delenv("POSTSTELLE_EVENT_LOOP", raising=False)
    monkeypatch.setenv("POSTSTELLE_GC", "default")  # the test process keeps its collector as it is
    assert eventloop.loop_name() == "uvloop"
    assert eventloop.run(_loop_class()).startswith("uvloop")
    monkeypatch.setenv("POSTSTELLE_EVENT_LOOP", "asyncio")
    assert eventloop.loop_name() == "asyncio"
    assert eventloop.run(_loop_class()).startswith("asyncio")


def _collector_after_run(gc_setting: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "POSTSTELLE_GC"}
    if gc_setting is not None:
        env["POSTSTELLE_GC"] = gc_setting
    code = ("import asyncio, gc; from pipeline import eventloop\n"
            "async def main(): return (gc.get_threshold(), gc.get_freeze_count() > 0)\n"
            "print(eventloop.run(main()))")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_a_component_runs_with_the_collector_tuned_unless_told_otherwise() -> None:
    assert _collector_after_run(None) == f"({eventloop.GC_THRESHOLDS!r}, True)"
    assert _collector_after_run("default") == "((700, 10, 10), False)"
