"""The event loop every long-running component runs on: uvloop where installed, else asyncio's own.

uvloop (libuv) takes less CPU per socket event, timer and callback than asyncio's selector loop,
which is most of what the ingress and the Kafka clients do (docs/performance.md). Setting
``POSTSTELLE_EVENT_LOOP=asyncio`` runs a component on the standard loop instead (to rule the loop
out when chasing a bug; everything works on both).

Python's cyclic garbage collector is tuned for a server too (`tune_gc`): under load its default
thresholds (a young collection every 700 allocations, a full one every 100 of those) made it a tenth
of the ingress's event-loop CPU, most of it walking the objects imported at start-up again and again.
``POSTSTELLE_GC=default`` keeps Python's defaults.
"""
from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["run", "loop_name", "tune_gc"]

T = TypeVar("T")
GC_THRESHOLDS = (20_000, 20, 20)  # young collections 30x rarer: most of a message's objects are gone by then


def tune_gc() -> None:
    """Freeze what exists (modules, settings: it lives as long as the process) out of the collector's
    sight and collect the young generation less often; the cycles a message leaves are still collected."""
    if os.environ.get("POSTSTELLE_GC", "tuned") == "default":
        return
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


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
    """`asyncio.run(main)` on the loop `loop_name()` names, the collector tuned (`tune_gc`)."""
    tune_gc()
    if loop_name() == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    return asyncio.run(main)
