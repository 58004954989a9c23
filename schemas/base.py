"""The base of every event: what all of them carry (`schemas/events.py` says what each means)."""
from __future__ import annotations

from dataclasses import dataclass, field

from schemas.ids import new_id
from schemas.parts import now_iso

__all__ = ["Event"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    message_id: str = ""
    id: str = field(default_factory=new_id)
    time: str = field(default_factory=now_iso)
    schema_version: int = 1  # event types whose meaning changed override this default
