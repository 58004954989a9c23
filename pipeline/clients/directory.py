"""The site's LDAP directory, as the SMTP-time checks and AUTH read it.

`Directory` answers five questions, each an async method:

- `lookup(address)`: the person or group an address belongs to (`mail` or `mailLocalAddress`,
  matched case-insensitively by the server), as an `Entry`, or None.
- `member_of(address)`: the groups (their `cn` and `mail`, lower case) the address's entry is a
  member of, directly or through groups that are members of groups (loops are cut).
- `group_members(group_address)`: the primary addresses of a group's enabled members, nested
  groups expanded (loops cut); [] for an address that is not a group.
- `attributes(address, names)`: the values of some attributes of that person or group (the
  per-user settings a site keeps in its directory, `pipeline.state.users`).
- `authenticate(login, password)`: an `Account` when `login` (a `uid`, or a primary `mail`) names
  an enabled person and a real LDAP simple bind as that person's DN succeeds with `password`;
  None otherwise. Passwords are never compared here, never cached, and an empty password is
  refused without asking the server (it would be an anonymous bind).

How the directory models people, aliases, groups and disabled accounts is documented at the top
of ``deploy/local/directory.ldif``: a person is an ``inetOrgPerson`` with one `mail` (the mailbox)
and aliases in `mailLocalAddress`; a group is a ``groupOfNames`` with its list address in `mail`
and `member` DNs; a person is disabled when `shadowExpire` is present, not -1 and not after today
(days since 1970-01-01 UTC). slapd does not enforce `shadowExpire`; this module does.

Failures: the server down, refusing, timing out or answering with an error raises
`DirectoryUnavailable`, which is never "not found" and never cached. Every operation is bounded by
`timeout` seconds (connect, each receive, and the whole call as the caller awaits it).

ldap3 is synchronous, so operations run in a small thread pool of our own (the event loop never
blocks); each pool thread keeps one connection (anonymous, or bound as `bind_dn`) and reopens it
after a failure. A connection that fails on reuse (e.g. slapd restarted) is retried once on a
fresh one. Filters are built only with ldap3's `escape_filter_chars`, so an address such as
``*@school.test`` matches nothing instead of everybody.

Answers of `lookup`, `member_of`, `group_members` and `attributes` are cached for `cache_ttl`
seconds, found and not found alike (at most `CACHE_ENTRIES` keys; 0 turns the cache off). A change
in the directory is therefore seen after at most `cache_ttl` seconds.

Settings (`[ldap]`, `pipeline.settings.LdapSettings`): `host`, `port`, `base`, `timeout`, and,
when the settings carry them, `cache_ttl` (default 60 s), `bind_dn` and `password_file` (default:
anonymous read access).
"""
from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars

__all__ = [
    "Account",
    "Directory",
    "DirectoryUnavailable",
    "Entry",
    "CACHE_ENTRIES",
    "DEFAULT_CACHE_TTL",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_CACHE_TTL = 60.0
CACHE_ENTRIES = 10_000  # most cached answers; an RCPT flood of made-up addresses cannot grow it further
MAX_NESTING = 8  # group-in-group levels followed by member_of and group_members
POOL_THREADS = 4

_PERSON = "(objectClass=inetOrgPerson)"
_GROUP = "(objectClass=groupOfNames)"
# an address: a person's mailbox or alias, or a group's list address
_ADDRESS_FILTER = "(&(|" + _PERSON + _GROUP + ")(|(mail={0})(mailLocalAddress={0})))"
_ATTRIBUTES = ["objectClass", "uid", "cn", "mail", "mailLocalAddress", "shadowExpire", "member"]
_INVALID_CREDENTIALS = 49


class DirectoryUnavailable(Exception):
    """The directory did not answer (down, timeout, server error): try again later."""


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
    members: tuple[str, ...] = ()  # member DNs (groups only)

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


class _TtlCache:
    """Answers (None included) kept for `ttl` seconds; the oldest go first when full."""

    _MISSING = object()

    def __init__(self, ttl: float, max_entries: int, clock: Callable[[], float]) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self._items: dict[tuple[str, str], tuple[float, Any]] = {}

    def get(self, key: tuple[str, str]) -> Any:
        item = self._items.get(key)
        if item is None:
            return self._MISSING
        expires, value = item
        if self.clock() >= expires:
            del self._items[key]
            return self._MISSING
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


class Directory:
    """Read-only LDAP access with a thread pool, a per-thread connection and a TTL cache."""

    def __init__(self, host: str, port: int, base: str, timeout: float, *,
                 cache_ttl: float = DEFAULT_CACHE_TTL, bind_dn: str = "", bind_password: str = "",
                 threads: int = POOL_THREADS, clock: Callable[[], float] = time.monotonic) -> None:
        self.host = host
        self.port = port
        self.base = base
        self.timeout = timeout
        self.bind_dn = bind_dn
        self._bind_password = bind_password
        self._threads = threads
        self._cache = _TtlCache(cache_ttl, CACHE_ENTRIES, clock)
        self._executor: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: set[ldap3.Connection] = set()
        self.requests = 0  # LDAP searches and binds sent (for tests and metrics)

    @classmethod
    def from_settings(cls, ldap: Any, **kwargs: Any) -> Directory:
        """From `[ldap]` (`pipeline.settings.LdapSettings`); `password_file` is read here."""
        password = ""
        bind_dn, password_file = getattr(ldap, "bind_dn", ""), getattr(ldap, "password_file", "")
        if bind_dn and not password_file:
            raise ValueError("ldap.bind_dn needs ldap.password_file (the bind password is never in the config)")
        if password_file:
            try:
                password = Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise ValueError(f"ldap.password_file: cannot read {password_file}: {exc.strerror}") from None
        return cls(ldap.host, ldap.port, ldap.base, ldap.timeout,
                   cache_ttl=getattr(ldap, "cache_ttl", DEFAULT_CACHE_TTL),
                   bind_dn=bind_dn, bind_password=password, **kwargs)

    async def start(self) -> None:
        """Create the thread pool; connections open on first use (the server may be down now)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._threads, thread_name_prefix="ldap")

    async def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        with self._lock:
            connections, self._connections = list(self._connections), set()
        for conn in connections:
            _unbind_quietly(conn)

    # ---- the questions ----------------------------------------------------------------------------

    async def lookup(self, address: str) -> Entry | None:
        key = address.lower()
        if "@" not in key or not _plain(key):
            return None
        return await self._cached("lookup", key, self._lookup_sync)

    async def member_of(self, address: str) -> frozenset[str]:
        entry = await self.lookup(address)
        if entry is None:
            return frozenset()
        return await self._cached("member_of", entry.dn.lower(), lambda _: self._groups_of_sync(entry.dn))

    async def group_members(self, group_address: str) -> list[str]:
        entry = await self.lookup(group_address)
        if entry is None or entry.kind != "group":
            return []
        return await self._cached("group_members", entry.dn.lower(), lambda _: self._members_sync(entry))

    async def attributes(self, address: str, names: Sequence[str]) -> dict[str, tuple[str, ...]] | None:
        """The values of the attributes `names` on the entry `address` belongs to (as `lookup` finds
        it), every name present ((): no value); None when no entry has the address. Cached like `lookup`."""
        key = address.lower()
        wanted = tuple(sorted(set(names)))
        if "@" not in key or not _plain(key):
            return None
        return await self._cached("attributes " + ",".join(wanted), key, lambda a: self._attributes_sync(a, wanted))

    async def authenticate(self, login: str, password: str) -> Account | None:
        if not login or not password or not _plain(login):
            return None
        return await self._run(self._authenticate_sync, login, password)

    # ---- async plumbing ---------------------------------------------------------------------------

    async def _cached(self, kind: str, key: str, fetch: Callable[[str], T]) -> T:
        hit = self._cache.get((kind, key))
        if hit is not _TtlCache._MISSING:
            return hit
        value = await self._run(fetch, key)
        self._cache.put((kind, key), value)
        return value

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in the pool, awaited at most `timeout` seconds."""
        await self.start()
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        try:
            async with asyncio.timeout(self.timeout):
                return await future
        except TimeoutError:
            raise DirectoryUnavailable(f"ldap://{self.host}:{self.port}: no answer within {self.timeout}s") from None

    # ---- in the pool threads ----------------------------------------------------------------------

    def _lookup_sync(self, address: str) -> Entry | None:
        flt = _ADDRESS_FILTER.format(escape_filter_chars(address))
        found = [_entry(item) for item in self._search(self.base, flt, _ATTRIBUTES)]
        if len(found) > 1:
            log.warning("address %s belongs to %d entries (%s); using the first", address, len(found),
                        ", ".join(e.dn for e in found))
        return min(found, key=lambda e: e.dn.lower(), default=None)

    def _attributes_sync(self, address: str, names: tuple[str, ...]) -> dict[str, tuple[str, ...]] | None:
        found = self._search(self.base, _ADDRESS_FILTER.format(escape_filter_chars(address)), list(names) or ["1.1"])
        if not found:
            return None
        item = min(found, key=lambda i: i["dn"].lower())
        return {name: tuple(_values(item, name)) for name in names}

    def _groups_of_sync(self, dn: str) -> frozenset[str]:
        """cn and mail of the groups `dn` is in, through at most MAX_NESTING levels of groups."""
        names: set[str] = set()
        seen = {dn.lower()}
        frontier = [dn]
        for _ in range(MAX_NESTING):
            members = "".join(f"(member={escape_filter_chars(d)})" for d in frontier)
            frontier = []
            for item in self._search(self.base, f"(&{_GROUP}(|{members}))", ["cn", "mail"]):
                if item["dn"].lower() in seen:
                    continue
                seen.add(item["dn"].lower())
                frontier.append(item["dn"])
                names.update(v.lower() for v in _values(item, "cn") + _values(item, "mail"))
            if not frontier:
                break
        return frozenset(names)

    def _members_sync(self, group: Entry) -> list[str]:
        """Primary addresses of the enabled people in `group` and the groups inside it."""
        addresses: set[str] = set()
        seen = {group.dn.lower()}
        pending = [(dn, 1) for dn in group.members]
        while pending:
            dn, depth = pending.pop()
            if dn.lower() in seen:
                continue
            seen.add(dn.lower())
            member = self._read(dn)
            if member is None:
                log.warning("group %s lists %s, which is no person or group", group.dn, dn)
            elif member.kind == "person" and not member.disabled and member.mail:
                addresses.add(member.mail)
            elif member.kind == "group" and depth < MAX_NESTING:
                pending.extend((d, depth + 1) for d in member.members)
        return sorted(addresses)

    def _read(self, dn: str) -> Entry | None:
        """The person or group at `dn`, or None when there is no such entry (or it is neither)."""
        found = self._search(dn, f"(|{_PERSON}{_GROUP})", _ATTRIBUTES, scope=ldap3.BASE, missing_ok=True)
        return _entry(found[0]) if found else None

    def _authenticate_sync(self, login: str, password: str) -> Account | None:
        attribute = "mail" if "@" in login else "uid"
        flt = f"(&{_PERSON}({attribute}={escape_filter_chars(login)}))"
        found = [_entry(item) for item in self._search(self.base, flt, _ATTRIBUTES)]
        if len(found) != 1:
            if found:
                log.warning("login %r names %d entries; refused", login, len(found))
            return None
        person = found[0]
        if person.disabled:
            log.info("login %s: account %s is disabled", login, person.dn)
            return None
        if not self._bind_as(person.dn, password):
            return None
        return Account(uid=person.uid, dn=person.dn, mail=person.mail, addresses=person.addresses)

    def _bind_as(self, dn: str, password: str) -> bool:
        """A simple bind as `dn` on a connection of its own: True, False (wrong password) or raises."""
        self._count()
        conn = ldap3.Connection(self._server(), user=dn, password=password, read_only=True,
                                receive_timeout=self._receive_timeout, raise_exceptions=False)
        try:
            if conn.bind():
                return True
            if conn.result.get("result") == _INVALID_CREDENTIALS:
                return False
            raise DirectoryUnavailable(f"bind as {dn}: {conn.result.get('description')} "
                                       f"{conn.result.get('message', '')}".rstrip())
        except (LDAPException, OSError) as exc:
            raise DirectoryUnavailable(f"bind as {dn} on {self.host}:{self.port}: {exc}") from None
        finally:
            _unbind_quietly(conn)

    def _search(self, base: str, flt: str, attributes: list[str], scope: str = ldap3.SUBTREE,
                missing_ok: bool = False) -> list[dict[str, Any]]:
        """The entries found; a reused connection that fails is replaced and the search retried once."""
        for attempt in (1, 2):
            conn, reused = self._connection()
            self._count()
            try:
                conn.search(base, flt, search_scope=scope, attributes=attributes,
                            time_limit=max(1, int(self.timeout)))
            except (LDAPException, OSError) as exc:
                self._discard(conn)
                if reused and attempt == 1:
                    continue
                raise DirectoryUnavailable(f"search on {self.host}:{self.port}: {exc}") from None
            code = conn.result.get("result")
            if code == 0 or (missing_ok and code == 32):  # 32: noSuchObject
                return [item for item in conn.response or () if item.get("type") == "searchResEntry"]
            raise DirectoryUnavailable(f"search {flt} under {base}: {conn.result.get('description')} "
                                       f"{conn.result.get('message', '')}".rstrip())
        raise AssertionError("unreachable")

    def _connection(self) -> tuple[ldap3.Connection, bool]:
        """This thread's connection (opened, and bound if configured, when there is none)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn, True
        try:
            conn = ldap3.Connection(self._server(), user=self.bind_dn or None,
                                    password=self._bind_password or None, auto_bind=ldap3.AUTO_BIND_NO_TLS,
                                    read_only=True, receive_timeout=self._receive_timeout, raise_exceptions=False)
        except (LDAPException, OSError) as exc:
            raise DirectoryUnavailable(f"connect to {self.host}:{self.port}: {exc}") from None
        self._local.conn = conn
        with self._lock:
            self._connections.add(conn)
        return conn, False

    def _discard(self, conn: ldap3.Connection) -> None:
        self._local.conn = None
        with self._lock:
            self._connections.discard(conn)
        _unbind_quietly(conn)

    def _server(self) -> ldap3.Server:
        return ldap3.Server(self.host, port=self.port, get_info=ldap3.NONE, connect_timeout=self.timeout)

    @property
    def _receive_timeout(self) -> int:
        """Whole seconds (ldap3 packs it into SO_RCVTIMEO); the caller's wait is bounded exactly."""
        return max(1, math.ceil(self.timeout))

    def _count(self) -> None:
        with self._lock:
            self.requests += 1


def _plain(text: str) -> bool:
    """No spaces or control characters: LDAP matching would ignore some (e.g. a trailing NUL)."""
    return all(c.isprintable() and not c.isspace() for c in text)


def _values(item: dict[str, Any], name: str) -> list[str]:
    return [str(v) for v in item["attributes"].get(name) or []]


def _entry(item: dict[str, Any]) -> Entry:
    classes = {c.lower() for c in _values(item, "objectClass")}
    mails = [m.lower() for m in _values(item, "mail")]
    if len(mails) > 1:
        log.warning("%s has %d mail values; the first is taken as primary", item["dn"], len(mails))
    return Entry(
        kind="group" if "groupofnames" in classes else "person",
        dn=item["dn"],
        mail=mails[0] if mails else "",
        aliases=tuple(a.lower() for a in _values(item, "mailLocalAddress")),
        disabled=_expired(_values(item, "shadowExpire")),
        uid=next(iter(_values(item, "uid")), ""),
        cn=next(iter(_values(item, "cn")), ""),
        members=tuple(_values(item, "member")),
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


def _unbind_quietly(conn: ldap3.Connection) -> None:
    try:
        conn.unbind()
    except Exception:  # closing a broken connection may fail in any way; it is gone either way
        pass
