"""Details the route stage records in its result."""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["RouteDetails"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteDetails:
    routes: dict[str, list[str]] = field(default_factory=dict)  # destination -> recipients
