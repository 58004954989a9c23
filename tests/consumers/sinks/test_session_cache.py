"""The cache of kept connections: what it hands out, and when it ends what it keeps."""
from __future__ import annotations

import asyncio

import pytest

from consumers.sinks.session_cache import SessionCache

pytestmark = pytest.mark.timeout(10)


class Fake:
    def __init__(self, name: str) -> None:
        self.name, self.open = name, True
        self.opened = asyncio.get_running_loop().time()

    def alive(self) -> bool:
        return self.open


async def _cache(idle: float = 5.0, lifetime: float = 300.0) -> tuple[SessionCache[Fake], list[str]]:
    ended: list[str] = []

    async def end(session: Fake) -> None:
        ended.append(session.name)

    return SessionCache(idle, end, lifetime=lifetime), ended


async def test_the_most_recently_kept_session_comes_first_and_only_once():
    cache, ended = await _cache()
    a, b = Fake("a"), Fake("b")
    cache.keep(a)
    cache.keep(b)
    assert cache.take() is b
    assert cache.take() is a
    assert cache.take() is None
    assert ended == []


async def test_a_dead_session_is_ended_not_handed_out():
    cache, ended = await _cache()
    a = Fake("a")
    cache.keep(a)
    a.open = False
    assert cache.take() is None
    await asyncio.sleep(0)
    assert ended == ["a"]


async def test_unused_sessions_are_ended_when_their_time_is_up_without_another_delivery():
    cache, ended = await _cache(idle=0.1)
    cache.keep(Fake("a"))
    await asyncio.sleep(0.05)
    cache.keep(Fake("b"))
    await asyncio.sleep(0.08)
    assert ended == ["a"] and len(cache) == 1
    await asyncio.sleep(0.1)
    assert ended == ["a", "b"] and len(cache) == 0


async def test_a_session_older_than_the_lifetime_is_not_reused():
    cache, ended = await _cache(lifetime=0.05)
    a = Fake("a")
    await asyncio.sleep(0.06)
    cache.keep(a)
    assert cache.take() is None
    await asyncio.sleep(0)
    assert ended == ["a"]


async def test_close_ends_every_kept_session():
    cache, ended = await _cache()
    cache.keep(Fake("a"))
    cache.keep(Fake("b"))
    await cache.close()
    assert sorted(ended) == ["a", "b"] and len(cache) == 0
