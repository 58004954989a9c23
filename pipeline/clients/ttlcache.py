"""A small TTL cache of answers (None included), bounded in entries: the directory client's.

Answers are kept for `ttl` seconds (0: nothing is kept); when `max_entries` are held the expired go
first, then the oldest, so a flood of made-up keys (an RCPT flood of unknown addresses) cannot grow
it further. `get` returns `TtlCache.MISSING` for a key it does not hold.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["TtlCache"]


class TtlCache:
    """Answers (None included) kept for `ttl` seconds; the oldest go first when full."""

    MISSING = object()

    def __init__(self, ttl: float, max_entries: int, clock: Callable[[], float]) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self._items: dict[tuple[str, str], tuple[float, Any]] = {}

    def get(self, key: tuple[str, str]) -> Any:
        item = self._items.get(key)
        if item is None:
            return self.MISSING
        expires, value = item
        if self.clock() >= expires:
            del self._items[key]
            return self.MISSING
        return value

    def put(self, key: tuple[str, str], value: Any) -> None:
        if self.ttl <= 0:
            return
        self._items.pop(key, None)
        if len(self._items) >= self.max_entries:
            self._drop_expired()
        while len(self._items) >= self.max_entries:
            del self._items[next(iter(self._items))]  # insertion order: the oldest answer
        self._items[key] = (self.clock() + self.ttl, value)

    def _drop_expired(self) -> None:
        now = self.clock()
        for key in [k for k, (expires, _) in self._items.items() if now >= expires]:
            del self._items[key]
