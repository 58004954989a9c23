"""Kept connections to one next hop, for the next delivery (Postfix's connection cache).

A delivery transport hands a session it could use again to `SessionCache.keep` instead of ending it,
and asks `take` for one before it connects. A session is handed out only while it is `alive()` (open,
nothing unasked-for from the server), unused for less than `idle_seconds` and younger than
`lifetime`; the others are ended with `end` (QUIT and close) in the background. Unused sessions are
ended when their time is up, whether or not another delivery comes, and all of them by `close`.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

__all__ = ["SessionCache", "REUSE_LIFETIME"]

REUSE_LIFETIME = 300.0  # seconds a connection is used at most (Postfix: smtp_connection_reuse_time_limit)


class Reusable(Protocol):
    opened: float  # loop time of the connect

    def alive(self) -> bool: ...


S = TypeVar("S", bound=Reusable)


class SessionCache(Generic[S]):
    def __init__(self, idle_seconds: float, end: Callable[[S], Awaitable[None]],
                 lifetime: float = REUSE_LIFETIME) -> None:
        self.idle_seconds, self.lifetime = idle_seconds, lifetime
        self._end = end
        self._idle: list[tuple[float, S]] = []  # (unused until, session), the most recently kept last
        self._expiry: asyncio.TimerHandle | None = None
        self._ending: set[asyncio.Task] = set()

    def __len__(self) -> int:
        return len(self._idle)

    def take(self) -> S | None:
        """The most recently kept usable session (removed from the cache), or None."""
        now = asyncio.get_running_loop().time()
        while self._idle:
            until, session = self._idle.pop()
            if self._usable(now, until, session):
                return session
            self._end_later(session)
        return None

    def keep(self, session: S) -> None:
        loop = asyncio.get_running_loop()
        self._idle.append((loop.time() + self.idle_seconds, session))
        if self._expiry is None:
            self._expiry = loop.call_later(self.idle_seconds, self._expire)

    async def close(self) -> None:
        """End every kept session and wait for those being ended."""
        idle, self._idle = self._idle, []
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        await asyncio.gather(*(self._end(session) for _, session in idle), *self._ending)

    def _usable(self, now: float, until: float, session: S) -> bool:
        return now < until and now - session.opened < self.lifetime and session.alive()

    def _expire(self) -> None:
        """End the sessions whose time is up; look again when the next one's is."""
        loop = asyncio.get_running_loop()
        now, self._expiry = loop.time(), None
        kept = []
        for until, session in self._idle:
            if self._usable(now, until, session):
                kept.append((until, session))
            else:
                self._end_later(session)
        self._idle = kept
        if kept:
            self._expiry = loop.call_later(max(min(until for until, _ in kept) - now, 0.01), self._expire)

    def _end_later(self, session: S) -> None:
        task = asyncio.get_running_loop().create_task(self._end(session))
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)
