"""The components' event loop (pipeline/eventloop.py)."""
from __future__ import annotations

import asyncio

from pipeline import eventloop


async def _loop_class() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_components_run_on_uvloop_unless_told_otherwise(monkeypatch) -> None:
    monkeypatch.delenv("POSTSTELLE_EVENT_LOOP", raising=False)
    assert eventloop.loop_name() == "uvloop"
    assert eventloop.run(_loop_class()).startswith("uvloop")
    monkeypatch.setenv("POSTSTELLE_EVENT_LOOP", "asyncio")
    assert eventloop.loop_name() == "asyncio"
    assert eventloop.run(_loop_class()).startswith("asyncio")
