"""The event loop every long-running component runs on: uvloop where installed, else asyncio's own.

uvloop (libuv) takes less CPU per socket event, timer and callback than asyncio's selector loop,
which is most of what the ingress and the Kafka clients do (docs/performance.md). Setting
``POSTSTELLE_EVENT_LOOP=asyncio`` runs a component on the standard loop instead (to rule the loop
out when chasing a bug; everything works on both).
"""
from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["run", "loop_name"]

T = TypeVar("T")


def loop_name() -> str:
    """"uvloop" or "asyncio": the loop `run` uses in this environment."""
    if os.environ.get("POSTSTELLE_EVENT_LOOP", "uvloop") == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the loop `loop_name()` names."""
    if loop_name() == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    return asyncio.run(main)
