"""The verdict wait ends when an event is set, and otherwise never before its full timeout."""

import asyncio
import time

import uvloop

from ingress.verdicts import first_of


def test_the_wait_never_ends_short_of_its_timeout_under_uvloop():
    async def waits() -> list[float]:
        took = []
        for _ in range(30):
            started = time.monotonic()
            await first_of(asyncio.Event(), timeout=0.0123)
            took.append(time.monotonic() - started)
        return took

    assert min(uvloop.run(waits())) >= 0.0123


def test_the_wait_ends_as_soon_as_one_event_is_set():
    async def waits() -> float:
        first, second = asyncio.Event(), asyncio.Event()
        asyncio.get_running_loop().call_later(0.01, second.set)
        started = time.monotonic()
        await first_of(first, second, timeout=5)
        return time.monotonic() - started

    assert uvloop.run(waits()) < 1
