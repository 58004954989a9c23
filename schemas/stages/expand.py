"""Details the expand stage records in its result."""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ExpandDetails", "GroupExpansion"]


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupExpansion:
    """One group address and what became of it (see `pipeline.clients.groups.Expansion`)."""

    group: str  # the list address the sender used
    name: str = ""  # the group's cn
    members: list[str] = field(default_factory=list)  # the addresses it was replaced by
    nested: list[str] = field(default_factory=list)  # groups expanded inside it
    loops: list[str] = field(default_factory=list)  # "outer -> inner": a group containing itself
    duplicates: list[str] = field(default_factory=list)  # reached twice, one copy
    disabled: list[str] = field(default_factory=list)  # members whose account has expired
    no_mailbox: list[str] = field(default_factory=list)  # people without mail (DNs)
    unknown: list[str] = field(default_factory=list)  # member references that name nobody
    bounces_to: str = ""  # envelope sender of the members' copies; "": the original sender


@dataclass(frozen=True, slots=True, kw_only=True)
class ExpandDetails:
    groups: list[GroupExpansion] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> the mailbox it was replaced by
    refused: dict[str, str] = field(default_factory=dict)  # recipient -> why it was rejected here
