"""The site's LDAP directory, as the SMTP-time checks and AUTH read it.

`Directory` answers these questions, each an async method:

- `lookup(address)`: the person or group an address belongs to (`mail` or `mailLocalAddress`,
  matched case-insensitively by the server), as an `Entry`, or None.
- `member_of(address)`: the groups (their `cn` and `mail`, lower case) the address's entry is a
  member of, directly or through groups that are members of groups (loops are cut).
- `entries(dns)` and `people_by_uid(uids)`: the entries at some DNs, the people with some logins,
  read `BATCH` at a time in the pool (what `pipeline.clients.groups` expands groups with).
- `attributes(address, names)`: the values of some attributes of that person or group (the
  per-user settings a site keeps in its directory, `pipeline.state.users`).
- `authenticate(login, password)`: an `Account` when `login` (a `uid`, or a primary `mail`) names
  an enabled person and a real LDAP simple bind as that person's DN succeeds with `password`;
  None otherwise. Passwords are never compared here, never cached, and an empty password is
  refused without asking the server (it would be an anonymous bind).

How the directory models people, aliases, groups and disabled accounts is documented at the top
of ``deploy/local/directory.ldif``: a person is an ``inetOrgPerson`` with one `mail` (the mailbox)
and aliases in `mailLocalAddress`; a group is a ``groupOfNames`` (`member` DNs), a
``groupOfUniqueNames`` (`uniqueMember` DNs), a ``posixGroup`` (`memberUid` logins) or a
``nisMailAlias``, each with its list address in `mail` (through ``extensibleObject``) and plain
member addresses in `member_address_attribute` (``rfc822MailMember``); a person is disabled when
`shadowExpire` is present, not -1 and not after today (days since 1970-01-01 UTC). slapd does not
enforce `shadowExpire`; this module does.

Failures: the server down, refusing, timing out or answering with an error raises
`DirectoryUnavailable`, which is never "not found" and never cached. Every operation is bounded by
`timeout` seconds (connect, each receive, and the whole call as the caller awaits it).

ldap3 is synchronous, so operations run in a small thread pool of our own (the event loop never
blocks); each pool thread keeps one connection (anonymous, or bound as `bind_dn`) and reopens it
after a failure. A connection that fails on reuse (e.g. slapd restarted) is retried once on a
fresh one. Filters are built only with ldap3's `escape_filter_chars`, so an address such as
``*@school.test`` matches nothing instead of everybody.

Answers of `lookup`, `member_of`, `entries`, `people_by_uid` and `attributes` are cached for
`cache_ttl` seconds, found and not found alike (at most `CACHE_ENTRIES` keys; 0 turns the cache off). A change
in the directory is therefore seen after at most `cache_ttl` seconds.

Settings (`[ldap]`, `pipeline.settings.LdapSettings`): `host`, `port`, `base`, `timeout`, and,
when the settings carry them, `cache_ttl` (default 60 s), `bind_dn` and `password_file` (default:
anonymous read access) and `member_address_attribute`.
"""
from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import parse_dn, safe_dn

from pipeline.clients.directory_entries import GROUP_CLASSES, Account, Entry, entry_from, values
from pipeline.clients.ttlcache import TtlCache
from pipeline.metrics import LDAP_UP

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
MAX_NESTING = 8  # group-in-group levels followed by member_of
POOL_THREADS = 4

_PERSON = "(objectClass=inetOrgPerson)"
_GROUP = "(|" + "".join(f"(objectClass={c})" for c in GROUP_CLASSES) + ")"
# an address: a person's mailbox or alias, or a group's list address
_ADDRESS_FILTER = "(&(|" + _PERSON + _GROUP + ")(|(mail={0})(mailLocalAddress={0})))"
_ATTRIBUTES = ["objectClass", "uid", "cn", "mail", "mailLocalAddress", "shadowExpire", "member", "uniqueMember",
               "memberUid", "owner"]
UID_BATCH = 100  # logins asked for in one search
BATCH = 200  # DNs or logins read in one call in the pool (each call is bounded by `timeout`)
_INVALID_CREDENTIALS = 49


class DirectoryUnavailable(Exception):
    """The directory did not answer (down, timeout, server error): try again later."""


class Directory:
    """Read-only LDAP access with a thread pool, a per-thread connection and a TTL cache."""

    def __init__(self, host: str, port: int, base: str, timeout: float, *,
                 cache_ttl: float = DEFAULT_CACHE_TTL, bind_dn: str = "", bind_password: str = "",
                 threads: int = POOL_THREADS, clock: Callable[[], float] = time.monotonic,
                 member_address_attribute: str = "rfc822MailMember") -> None:
        self.host = host
        self.port = port
        self.base = base
        self.timeout = timeout
        self.bind_dn = bind_dn
        self.member_address_attribute = member_address_attribute
        self._attributes = [*_ATTRIBUTES, *([member_address_attribute] if member_address_attribute else [])]
        self._bind_password = bind_password
        self._threads = threads
        self._cache = TtlCache(cache_ttl, CACHE_ENTRIES, clock)
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
                   bind_dn=bind_dn, bind_password=password,
                   member_address_attribute=getattr(ldap, "member_address_attribute", "rfc822MailMember"), **kwargs)

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
        return await self._cached("member_of", entry.dn.lower(), lambda _: self._groups_of_sync(entry))

    async def entries(self, dns: Sequence[str]) -> dict[str, Entry | None]:
        """The person or group at each DN (None: no such entry, or neither), keyed as given."""
        return await self._cached_many("entry", dns, self._read_many)

    async def people_by_uid(self, uids: Sequence[str]) -> dict[str, Entry | None]:
        """The person whose `uid` is each login (None: nobody, or several), keyed as given."""
        return await self._cached_many("uid", uids, self._people_by_uid_sync)

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
        if hit is not TtlCache.MISSING:  # the common case, without _cached_many's machinery
            return hit
        return (await self._cached_many(kind, [key], lambda keys: {keys[0]: fetch(keys[0])}))[key]

    async def _cached_many(self, kind: str, keys: Sequence[str],
                           fetch: Callable[[list[str]], dict[str, T]]) -> dict[str, T]:
        """The answers for `keys`; those not cached are fetched in the pool, `BATCH` keys a call (keys as
        given: `uid` matches case-exactly)."""
        found: dict[str, T] = {}
        for key in dict.fromkeys(keys):
            hit = self._cache.get((kind, key))
            if hit is not TtlCache.MISSING:
                found[key] = hit
        missing = [k for k in dict.fromkeys(keys) if k not in found]
        if not missing:
            return {key: found[key] for key in keys}
        chunks = [missing[i:i + BATCH] for i in range(0, len(missing), BATCH)]  # each within `timeout`
        slots = asyncio.Semaphore(self._threads)  # a chunk's time bound starts when a thread is free for it

        async def one(chunk: list[str]) -> dict[str, T]:
            async with slots:
                return await self._run(fetch, chunk)

        for fetched in await asyncio.gather(*(one(chunk) for chunk in chunks)):
            for key, value in fetched.items():
                self._cache.put((kind, key), value)
                found[key] = value
        return {key: found[key] for key in dict.fromkeys(keys)}

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in the pool, awaited at most `timeout` seconds."""
        await self.start()
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        up = LDAP_UP.labels(f"{self.host}:{self.port}")
        try:
            async with asyncio.timeout(self.timeout):
                result = await future
        except TimeoutError:
            up.set(0)
            raise DirectoryUnavailable(f"ldap://{self.host}:{self.port}: no answer within {self.timeout}s") from None
        except DirectoryUnavailable:
            up.set(0)
            raise
        up.set(1)
        return result

    # ---- in the pool threads ----------------------------------------------------------------------

    def _lookup_sync(self, address: str) -> Entry | None:
        flt = _ADDRESS_FILTER.format(escape_filter_chars(address))
        found = [self._entry(item) for item in self._search(self.base, flt, self._attributes)]
        if len(found) > 1:
            log.warning("address %s belongs to %d entries (%s); using the first", address, len(found),
                        ", ".join(e.dn for e in found))
        return min(found, key=lambda e: e.dn.lower(), default=None)

    def _attributes_sync(self, address: str, names: tuple[str, ...]) -> dict[str, tuple[str, ...]] | None:
        found = self._search(self.base, _ADDRESS_FILTER.format(escape_filter_chars(address)), list(names) or ["1.1"])
        if not found:
            return None
        item = min(found, key=lambda i: i["dn"].lower())
        return {name: tuple(values(item, name)) for name in names}

    def _groups_of_sync(self, entry: Entry) -> frozenset[str]:
        """cn and mail of the groups `entry` is in (by DN, its login for posixGroups, its addresses
        for plain member addresses), through at most MAX_NESTING levels of groups."""
        names: set[str] = set()
        seen = {entry.dn.lower()}
        frontier = [entry]
        for _ in range(MAX_NESTING):
            flt = "".join(self._membership_filters(e) for e in frontier)
            frontier = []
            for item in self._search(self.base, f"(&{_GROUP}(|{flt}))", self._attributes):
                if item["dn"].lower() in seen:
                    continue
                seen.add(item["dn"].lower())
                frontier.append(self._entry(item))
                names.update(v.lower() for v in values(item, "cn") + values(item, "mail"))
            if not frontier:
                break
        return frozenset(names)

    def _membership_filters(self, entry: Entry) -> str:
        """The filter terms a group listing `entry` matches."""
        dn = escape_filter_chars(entry.dn)
        terms = [f"(member={dn})", f"(uniqueMember={dn})"]
        if entry.kind == "person" and entry.uid:
            terms.append(f"(memberUid={escape_filter_chars(entry.uid)})")
        if self.member_address_attribute:
            terms += [f"({self.member_address_attribute}={escape_filter_chars(a)})" for a in sorted(entry.addresses)]
        return "".join(terms)

    def _read(self, dn: str) -> Entry | None:
        """The person or group at `dn`, or None when there is no such entry (or it is neither)."""
        try:
            safe_dn(dn)
        except LDAPException:  # not a DN at all (a broken member value): no such entry
            return None
        found = self._search(dn, f"(|{_PERSON}{_GROUP})", self._attributes, scope=ldap3.BASE, missing_ok=True)
        return self._entry(found[0]) if found else None

    def _read_many(self, dns: list[str]) -> dict[str, Entry | None]:
        """The entries at `dns`: one one-level search per parent and naming attribute (`uid=a,P`,
        `uid=b,P` → `(|(uid=a)(uid=b))` under P), a base read for a DN that does not fit that."""
        buckets: dict[tuple[str, str], dict[str, str]] = {}  # (parent, attribute) -> value lower -> dn
        found: dict[str, Entry | None] = {}
        for dn in dns:
            try:
                rdns = parse_dn(safe_dn(dn))
            except LDAPException:
                rdns = []
            if len(rdns) < 2 or rdns[0][2] == "+" or "\\" in rdns[0][1]:  # no parent, multi-valued, escapes
                found[dn] = self._read(dn)
                continue
            parent = ",".join(f"{a}={v}" for a, v, _ in rdns[1:])
            buckets.setdefault((parent, rdns[0][0]), {})[rdns[0][1].lower()] = dn
        for (parent, attribute), wanted in buckets.items():
            terms = "".join(f"({attribute}={escape_filter_chars(v)})" for v in wanted)
            by_value: dict[str, list[Entry]] = {}
            for item in self._search(parent, f"(&(|{_PERSON}{_GROUP})(|{terms}))", [*self._attributes, attribute],
                                     scope=ldap3.LEVEL, missing_ok=True):
                for value in values(item, attribute):
                    by_value.setdefault(value.lower(), []).append(self._entry(item))
            for value, dn in wanted.items():
                matches = by_value.get(value, [])
                found[dn] = matches[0] if len(matches) == 1 else (self._read(dn) if matches else None)
        return found

    def _people_by_uid_sync(self, uids: list[str]) -> dict[str, Entry | None]:
        people: dict[str, list[Entry]] = {}
        for start in range(0, len(uids), UID_BATCH):
            terms = "".join(f"(uid={escape_filter_chars(u)})" for u in uids[start:start + UID_BATCH])
            for item in self._search(self.base, f"(&{_PERSON}(|{terms}))", self._attributes):
                person = self._entry(item)
                people.setdefault(person.uid, []).append(person)
        found: dict[str, Entry | None] = {}
        for uid in uids:
            matches = people.get(uid, [])  # memberUid matches uid exactly (caseExactIA5Match)
            if len(matches) > 1:
                log.warning("login %r names %d people; none is taken", uid, len(matches))
            found[uid] = matches[0] if len(matches) == 1 else None
        return found

    def _entry(self, item: dict[str, Any]) -> Entry:
        return entry_from(item, self.member_address_attribute)

    def _authenticate_sync(self, login: str, password: str) -> Account | None:
        attribute = "mail" if "@" in login else "uid"
        flt = f"(&{_PERSON}({attribute}={escape_filter_chars(login)}))"
        found = [self._entry(item) for item in self._search(self.base, flt, self._attributes)]
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
            if code == 0 or (missing_ok and code in (32, 34)):  # noSuchObject, invalidDNSyntax
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


def _unbind_quietly(conn: ldap3.Connection) -> None:
    try:
        conn.unbind()
    except Exception:  # closing a broken connection may fail in any way; it is gone either way
        pass
