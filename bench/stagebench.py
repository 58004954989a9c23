"""What the stage benchmarks share: running a stage over messages one at a time, timed.

CPU time is `time.process_time()` of this process (threads the stage starts included), wall time
`time.perf_counter()`; each outcome is counted under `classify(outcome)`.
"""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from pipeline.stage import Outcome, Stage, Work

__all__ = ["rates", "time_stage"]


async def time_stage(stage: Stage, works: list[Work], classify: Callable[[Outcome], str]) -> tuple[float, float, Counter]:
    """(CPU seconds, wall seconds, outcome counts) of `stage.process` over `works`, in order."""
    counts: Counter = Counter()
    cpu, wall = time.process_time(), time.perf_counter()
    for work in works:
        counts[classify(await stage.process(work))] += 1
    return time.process_time() - cpu, time.perf_counter() - wall, counts


def rates(count: int, cpu: float, wall: float) -> str:
    """"1,234 messages/s per core (0.810 CPU-ms each), 900 messages/s wall (1.111 ms each)"."""
    return (f"{count / cpu:8,.0f} messages/s per core ({1000 * cpu / count:.3f} CPU-ms each), "
            f"{count / wall:8,.0f} messages/s wall ({1000 * wall / count:.3f} ms each)")
