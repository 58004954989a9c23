"""Time-ordered identifiers (UUID version 7, RFC 9562) for events and messages."""
from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid

__all__ = ["new_id", "id_time_ms", "derived_id"]

_lock = threading.Lock()
_last_ms = 0
_counter = 0
_POOL_BYTES = 4096  # random bits are read from the kernel 512 ids at a time, not per id
_pool = b""
_pool_at = 0


def _forget_pool() -> None:
    """A forked child must not reuse its parent's random bytes (two processes, the same ids)."""
    global _pool, _pool_at
    _pool, _pool_at = b"", 0


os.register_at_fork(after_in_child=_forget_pool)


def new_id() -> str:
    """A UUIDv7 string: 48-bit Unix milliseconds, then a 12-bit counter, then random bits.

    Ids made in one process sort in creation order, also within the same millisecond.
    """
    global _last_ms, _counter, _pool, _pool_at
    with _lock:
        if _pool_at >= len(_pool):
            _pool, _pool_at = os.urandom(_POOL_BYTES), 0
        rand = int.from_bytes(_pool[_pool_at:_pool_at + 8], "big") & ((1 << 62) - 1)
        _pool_at += 8
        now = time.time_ns() // 1_000_000
        if now <= _last_ms:
            _counter += 1
            if _counter > 0xFFF:  # counter exhausted: borrow the next millisecond
                _last_ms += 1
                _counter = 0
            now = _last_ms
        else:
            _last_ms, _counter = now, 0
        counter = _counter
    value = (now << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | rand
    return _uuid_text(value)


def _uuid_text(value: int) -> str:
    """`str(uuid.UUID(int=value))`, without building the UUID object."""
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def id_time_ms(event_id: str) -> int:
    """The creation time (Unix milliseconds) encoded in an id made by `new_id`."""
    return uuid.UUID(event_id).int >> 80


def derived_id(source_id: str, purpose: str) -> str:
    """A UUIDv7-shaped id that is a pure function of `source_id` and `purpose`.

    The time bits are those of `source_id` when it is a UUIDv7 (so derived ids sort like the event
    they come from); the other bits come from a SHA-256 of both inputs.
    """
    digest = int.from_bytes(hashlib.sha256(f"poststelle:{purpose}:{source_id}".encode()).digest(), "big")
    try:
        source = uuid.UUID(source_id)
        ms = source.int >> 80 if source.version == 7 else digest >> 208
    except ValueError:
        ms = digest >> 208
    counter = (digest >> 64) & 0xFFF
    rand = digest & ((1 << 62) - 1)
    value = (ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | rand
    return str(uuid.UUID(int=value))
