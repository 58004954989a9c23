"""What the stage benchmarks share: running a stage over messages one at a time, timed.

CPU time is `time.process_time()` of this process (threads the stage starts included), wall time
`time.perf_counter()`; each outcome is counted under `classify(outcome)`.
"""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from pipeline.stage import Outcome, Stage, Work

__all__ = ["time_stage"]


async def time_stage(stage: Stage, works: list[Work], classify: Callable[[Outcome], str]) -> tuple[float, float, Counter]:
    """(CPU seconds, wall seconds, outcome counts) of `stage.process` over `works`, in order."""
    counts: Counter = Counter()
    cpu, wall = time.process_time(), time.perf_counter()
    for work in works:
        counts[classify(await stage.process(work))] += 1
    return time.process_time() - cpu, time.perf_counter() - wall, counts
