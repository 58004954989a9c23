"""A bench-only stage whose work is a fixed amount of CPU: for bench/scaleout.py.

Registered as `bench_cpu` when this module is imported (`topology.stage_modules = ["cpu_stage"]`
with bench/ on the Python path). `process()` hashes `work_bytes` bytes with SHA-256 `rounds` times
in the event loop's thread (no sleep, no I/O, no other thread), then passes the message. The
default, 64 KiB × 48 rounds, is about 2 ms of one core on this machine, so
the stage's work dominates the runner's own per-record cost (about 0.1 ms, bench/runner_noop.py).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from pipeline.registry import register
from pipeline.stage import Outcome, StageContext, Work
from schemas.events import Verdict

__all__ = ["CpuStage", "burn"]

STAGE = "bench_cpu"


@dataclass(frozen=True, slots=True)
class CpuSettings:
    work_bytes: int = 65_536
    rounds: int = 48


def burn(data: bytes, rounds: int) -> bytes:
    """`rounds` chained SHA-256 passes over `data` (each digest feeds the next pass)."""
    digest = b""
    for _ in range(rounds):
        digest = hashlib.sha256(digest + data).digest()
    return digest


@register
class CpuStage:
    name = STAGE
    description = "Benchmark: burns a fixed amount of CPU per message, then passes it"
    Settings = CpuSettings

    def __init__(self, settings: CpuSettings, context: StageContext | None = None) -> None:
        self.data = bytes(range(256)) * (settings.work_bytes // 256)
        self.rounds = settings.rounds

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def process(self, work: Work) -> Outcome:
        burn(self.data, self.rounds)
        return Outcome(verdict=Verdict.PASS)
