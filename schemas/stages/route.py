"""Details the route stage records in its result."""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["RouteDetails"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteDetails:
    routes: dict[str, list[str]] = field(default_factory=dict)  # destination -> recipients
    # recipient -> why it goes where it goes: "address route", "domain route .dept.school.test",
    # "mailHost store2.school.test", "local domain", "remote" (only recipients not routed by default)
    reasons: dict[str, str] = field(default_factory=dict)
    # recipient -> the address it was rewritten to (the directory's mailRoutingAddress)
    rewritten: dict[str, str] = field(default_factory=dict)
    # recipient -> the addresses its mail is forwarded to (a per-user forward of the directory)
    forwarded: dict[str, list[str]] = field(default_factory=dict)
    # recipient -> why it could not be routed (a mailHost no destination serves)
    refused: dict[str, str] = field(default_factory=dict)
