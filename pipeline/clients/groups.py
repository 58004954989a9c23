"""What a local address stands for: a mailbox, an alias of one, or a group of members.

`GroupExpander.expand(address)` answers with an `Expansion`, read through the site's `Directory`
(and its cache):

- **a mailbox** (a person's `mail`): itself;
- **an alias** (a person's `mailLocalAddress`): the person's `mail`;
- **a group** (found by its list address, see `pipeline.clients.directory`): its members' primary
  addresses, level by level. Members are named by DN (`member`, `uniqueMember`), by login
  (`memberUid` of a posixGroup: the person with that `uid`), or as plain addresses (the directory's
  `member_address_attribute`, ``rfc822MailMember``): a plain address the directory knows is resolved
  like any member (an alias to its mailbox, a group expanded), an address outside the local domains
  is kept as it is, a local address nobody has is `unknown`. A member that is a group is expanded
  in turn (nested groups).

Nothing is dropped silently; each member that gives no address is recorded: `loops` (a group that
is already on the way down to it: a group containing itself, directly or through others; it is not
expanded again), `duplicates` (an address or group reached a second time: one copy), `disabled`
(people whose account has expired), `no_mailbox` (people without `mail`), `unknown` (DNs, logins or
local addresses that name nobody).

Limits: more than `max_members` distinct addresses, or groups nested deeper than `max_depth` levels
(the group itself is level 1), raise `ExpansionTooLarge`: never a truncated list. Each level costs
one batch of reads (`Directory.entries`, `Directory.people_by_uid`, lookups of plain addresses).
`DirectoryUnavailable` from the directory passes through.
"""
from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from pipeline.clients.directory import Directory, Entry

__all__ = ["Expansion", "ExpansionTooLarge", "GroupExpander", "DEFAULT_MAX_MEMBERS", "DEFAULT_MAX_DEPTH"]

DEFAULT_MAX_MEMBERS = 5000
DEFAULT_MAX_DEPTH = 8

Kind = Literal["unknown", "mailbox", "alias", "disabled", "no_mailbox", "group"]


class ExpansionTooLarge(Exception):
    """A group is larger or deeper than the limits allow: a person must look at it."""


@dataclass(frozen=True, slots=True)
class Expansion:
    """What `address` stands for (addresses lower case, in the order found)."""

    address: str
    kind: Kind
    into: tuple[str, ...] = ()  # mailbox/alias/disabled: the person's mail; group: the members' addresses
    name: str = ""  # a group's cn
    owner: str = ""  # a group's owner's primary address ("" without one, or when it has none)
    nested: tuple[str, ...] = ()  # groups expanded inside this one
    loops: tuple[str, ...] = ()  # "outer -> inner": inner is already on the way down to outer
    duplicates: tuple[str, ...] = ()
    disabled: tuple[str, ...] = ()
    no_mailbox: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()


def _label(entry: Entry) -> str:
    return entry.mail or entry.cn or entry.dn


@dataclass(slots=True)
class _Walk:
    """The state of one group's expansion."""

    into: dict[str, None] = field(default_factory=dict)
    seen_groups: set[str] = field(default_factory=set)
    nested: list[str] = field(default_factory=list)
    loops: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    disabled: list[str] = field(default_factory=list)
    no_mailbox: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    next_level: list[tuple[Entry, frozenset[str]]] = field(default_factory=list)

    def add(self, address: str) -> None:
        if address in self.into:
            self.duplicates.append(address)
        else:
            self.into[address] = None

    def member(self, found: Entry | None, ref: str, parent: Entry, path: frozenset[str]) -> None:
        """One member reference (`ref`: how `parent` names it) and the entry it names."""
        if found is None:
            self.unknown.append(ref)
        elif found.kind == "group":
            dn = found.dn.lower()
            if dn in path:
                self.loops.append(f"{_label(parent)} -> {_label(found)}")
            elif dn in self.seen_groups:
                self.duplicates.append(_label(found))
            else:
                self.seen_groups.add(dn)
                self.nested.append(_label(found))
                self.next_level.append((found, path | {dn}))
        elif found.disabled:
            self.disabled.append(found.mail or found.dn)
        elif not found.mail:
            self.no_mailbox.append(found.dn)
        else:
            self.add(found.mail)


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


class GroupExpander:
    def __init__(self, directory: Directory, local_domains: Iterable[str], *,
                 max_members: int = DEFAULT_MAX_MEMBERS, max_depth: int = DEFAULT_MAX_DEPTH) -> None:
        self.directory = directory
        self.local_domains = frozenset(d.lower() for d in local_domains)
        self.max_members = max_members
        self.max_depth = max_depth

    def is_local(self, address: str) -> bool:
        return address.rpartition("@")[2].rstrip(".").lower() in self.local_domains

    async def expand(self, address: str) -> Expansion:
        address = address.lower()
        entry = await self.directory.lookup(address)
        if entry is None:
            return Expansion(address, "unknown")
        if entry.kind == "group":
            return await self._group(address, entry)
        if not entry.mail:
            return Expansion(address, "no_mailbox")
        if entry.disabled:
            return Expansion(address, "disabled", (entry.mail,))
        return Expansion(address, "mailbox" if address == entry.mail else "alias", (entry.mail,))

    async def _group(self, address: str, group: Entry) -> Expansion:
        walk = _Walk(seen_groups={group.dn.lower()})
        level = [(group, frozenset({group.dn.lower()}))]
        depth = 0
        while level:
            depth += 1
            if depth > self.max_depth:
                inner = ", ".join(_label(g) for g, _ in level)
                raise ExpansionTooLarge(f"group {address}: nested deeper than max_depth {self.max_depth} "
                                        f"(level {depth}: {inner})")
            walk.next_level = []
            await self._expand_level(level, walk)
            if len(walk.into) > self.max_members:
                raise ExpansionTooLarge(f"group {address}: more than max_members {self.max_members} members "
                                        f"({len(walk.into)} after {depth} level(s))")
            level = walk.next_level
        return Expansion(
            address, "group", tuple(walk.into), name=group.cn, owner=await self._owner(group),
            nested=tuple(walk.nested), loops=_unique(walk.loops), duplicates=_unique(walk.duplicates),
            disabled=_unique(walk.disabled), no_mailbox=_unique(walk.no_mailbox), unknown=_unique(walk.unknown))

    async def _expand_level(self, level: list[tuple[Entry, frozenset[str]]], walk: _Walk) -> None:
        """Read every member of the groups of one level in one batch per kind, then sort them."""
        dns = [dn for g, _ in level for dn in g.members]
        uids = [uid for g, _ in level for uid in g.member_uids]
        local = list(dict.fromkeys(a for g, _ in level for a in g.member_addresses if self.is_local(a)))
        by_dn = await self.directory.entries(dns) if dns else {}
        by_uid = await self.directory.people_by_uid(uids) if uids else {}
        by_address = dict(zip(local, await asyncio.gather(*(self.directory.lookup(a) for a in local)), strict=True))
        for group, path in level:
            for dn in group.members:
                walk.member(by_dn[dn], dn, group, path)
            for uid in group.member_uids:
                person = by_uid[uid]
                walk.member(person, f"memberUid {uid}", group, path)
            for member in group.member_addresses:
                if member in by_address:
                    walk.member(by_address[member], member, group, path)
                else:
                    walk.add(member)  # outside the local domains: delivered as it is

    async def _owner(self, group: Entry) -> str:
        if not group.owner:
            return ""
        owner = (await self.directory.entries([group.owner]))[group.owner]
        return owner.mail if owner is not None and not owner.disabled else ""
