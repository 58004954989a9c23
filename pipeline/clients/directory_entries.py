"""What the directory client reads from an LDAP entry: a person or a group, and an account.

`entry_from` turns one search result into an `Entry`: its kind (a group when it has one of
`GROUP_CLASSES`), primary `mail` and aliases (lower case), whether the person is disabled
(`shadowExpire`, as in shadow(5)), and a group's members: DNs (`member`, `uniqueMember` without its
optional ``#'…'B`` unique id), logins (`memberUid`), plain addresses (the site's member address
attribute) and the first `owner`.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Entry", "Account", "GROUP_CLASSES", "entry_from", "values"]

log = logging.getLogger(__name__)

GROUP_CLASSES = ("groupOfNames", "groupOfUniqueNames", "posixGroup", "nisMailAlias")
_GROUP_CLASSES_LOWER = frozenset(c.lower() for c in GROUP_CLASSES)
_UNIQUE_ID = re.compile(r"#'[01]*'B$")  # the optional unique identifier after a uniqueMember DN


@dataclass(frozen=True, slots=True)
class Entry:
    """A person or a group found by one of its addresses; addresses are lower case."""

    kind: Literal["person", "group"]
    dn: str
    mail: str  # the primary address: a person's mailbox, a group's list address
    aliases: tuple[str, ...] = ()  # mailLocalAddress values
    disabled: bool = False  # shadowExpire reached (people only)
    uid: str = ""
    cn: str = ""
    members: tuple[str, ...] = ()  # member and uniqueMember DNs (groups only)
    member_uids: tuple[str, ...] = ()  # memberUid logins (posixGroup)
    member_addresses: tuple[str, ...] = ()  # plain addresses (member_address_attribute), lower case
    owner: str = ""  # the first owner DN (groups)

    @property
    def addresses(self) -> frozenset[str]:
        return frozenset({self.mail, *self.aliases} - {""})


@dataclass(frozen=True, slots=True)
class Account:
    """An authenticated person: who logged in and the addresses they may send as."""

    uid: str
    dn: str
    mail: str
    addresses: frozenset[str]  # mail and aliases, lower case


def values(item: dict[str, Any], name: str) -> list[str]:
    return [str(v) for v in item["attributes"].get(name) or []]


def entry_from(item: dict[str, Any], member_address_attribute: str) -> Entry:
    classes = {c.lower() for c in values(item, "objectClass")}
    mails = [m.lower() for m in values(item, "mail")]
    if len(mails) > 1:
        log.warning("%s has %d mail values; the first is taken as primary", item["dn"], len(mails))
    return Entry(
        kind="group" if classes & _GROUP_CLASSES_LOWER else "person",
        dn=item["dn"],
        mail=mails[0] if mails else "",
        aliases=tuple(a.lower() for a in values(item, "mailLocalAddress")),
        disabled=_expired(values(item, "shadowExpire")),
        uid=next(iter(values(item, "uid")), ""),
        cn=next(iter(values(item, "cn")), ""),
        members=tuple([*values(item, "member"), *(_UNIQUE_ID.sub("", v) for v in values(item, "uniqueMember"))]),
        member_uids=tuple(values(item, "memberUid")),
        member_addresses=tuple(a.lower() for a in values(item, member_address_attribute))
        if member_address_attribute else (),
        owner=next(iter(values(item, "owner")), ""),
    )


def _expired(shadow_expire: list[str]) -> bool:
    """shadow(5): expired when the day number is present, not -1 and not after today."""
    if not shadow_expire:
        return False
    try:
        day = int(shadow_expire[0])
    except ValueError:
        log.warning("shadowExpire %r is not a day number; the account is treated as disabled", shadow_expire[0])
        return True
    return day != -1 and day <= int(time.time() // 86400)
