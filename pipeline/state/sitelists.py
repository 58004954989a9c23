"""The site's own block and allow lists, kept in two compacted Kafka topics.

Two tables, `block` and `allow` (topics ``<prefix>.sitelist.block`` / ``.sitelist.allow``), each
keyed ``<kind>:<value>`` with a small JSON value ``{"comment", "added"}`` (None, a tombstone,
removes the entry). Kinds and what they match:

    address   an envelope sender address, exactly (lower case)         max@spam.test
    domain    a domain and every name under it (IDNA, lower case)      spam.test matches www.spam.test
    cidr      a client address in the network (IPv4 or IPv6)           192.0.2.0/24, 2001:db8::/32
    sha256    an attachment whose decoded content has this digest      64 hex digits

`parse_entry` validates and normalises what an operator typed (`EntryError` says precisely what is
wrong); `SiteLists` is the in-memory copy a process replays at start and keeps following (see
`pipeline.tables`); `write_entry` / `remove_entry` change the topics (`poststelle list`).
"""
from __future__ import annotations

import ipaddress
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import orjson

from pipeline import tables
from pipeline.bus import Topics
from pipeline.mail.domains import InvalidName, normalize_address, normalize_domain
from pipeline.settings import Settings
from pipeline.tables import KafkaTransport, Transport

__all__ = [
    "LISTS",
    "KINDS",
    "BLOCK",
    "ALLOW",
    "Entry",
    "EntryError",
    "Match",
    "SiteLists",
    "parse_entry",
    "kafka_transport",
    "write_entry",
    "remove_entry",
]

log = logging.getLogger(__name__)

BLOCK = "block"
ALLOW = "allow"
LISTS = (BLOCK, ALLOW)
KINDS = ("address", "domain", "cidr", "sha256")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class EntryError(ValueError):
    """An entry an operator typed cannot be a list entry; the text says why."""


# ---- names (domains and addresses are normalised by pipeline.mail.domains) -----------------------


def _normalize_cidr(text: str) -> str:
    try:
        network = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            loose = ipaddress.ip_network(text.strip(), strict=False)
            raise EntryError(f"{text!r} has host bits set; did you mean {loose}?") from None
        raise EntryError(f"{text!r} is not an IPv4 or IPv6 address or network (such as 192.0.2.0/24)") from None
    return str(network)


def _normalize_sha256(text: str) -> str:
    digest = text.strip().lower()
    if not _SHA256.fullmatch(digest):
        raise EntryError(f"{text!r} is not a SHA-256 digest: expected 64 hexadecimal digits, got {len(digest)} "
                         "characters" + ("" if all(c in "0123456789abcdef" for c in digest) else " with non-hex ones"))
    return digest


_NORMALIZERS = {"address": normalize_address, "domain": normalize_domain, "cidr": _normalize_cidr,
                "sha256": _normalize_sha256}


# ---- entries --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    list: str  # "block" or "allow"
    kind: str  # one of KINDS
    value: str  # normalised
    comment: str = ""
    added: float = 0.0  # seconds since the epoch

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.value}"

    def encode(self) -> bytes:
        return orjson.dumps({"comment": self.comment, "added": self.added})


def parse_entry(list_name: str, kind: str, value: str, comment: str = "", added: float | None = None) -> Entry:
    """A validated, normalised entry (EntryError naming what is wrong)."""
    if list_name not in LISTS:
        raise EntryError(f"unknown list {list_name!r}: expected block or allow")
    if kind not in KINDS:
        raise EntryError(f"unknown kind {kind!r}: expected one of {', '.join(KINDS)}")
    if any(ord(c) < 32 for c in comment):
        raise EntryError("the comment holds control characters")
    try:
        normalized = _NORMALIZERS[kind](value)
    except InvalidName as exc:  # a domain or address: the same words, as an entry error
        raise EntryError(str(exc)) from None
    return Entry(list_name, kind, normalized, comment, time.time() if added is None else added)


def _entry_from_record(list_name: str, key: str, value: bytes) -> Entry:
    kind, sep, text = key.partition(":")
    if not sep:
        raise EntryError(f"key {key!r} has no kind")
    try:
        data = orjson.loads(value)
        comment, added = str(data.get("comment", "")), float(data.get("added", 0.0))
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
        raise EntryError(f"value is not an entry: {exc}") from None
    entry = parse_entry(list_name, kind, text, comment, added)
    if entry.value != text:
        raise EntryError(f"key {key!r} is not normalised (expected {entry.key!r})")
    return entry


# ---- the in-memory copy ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Match:
    """Which entry matched what: `subject` is the address, domain, IP or digest looked up."""

    entry: Entry
    subject: str

    def describe(self) -> str:
        text = f"{self.entry.kind} {self.entry.value}"
        if self.subject != self.entry.value:
            text += f" ({self.subject})"
        return text + (f": {self.entry.comment}" if self.entry.comment else "")


@dataclass(slots=True)
class _Table:
    """One list: entries by key, and its networks indexed by (IP version, prefix length) for lookups
    that cost one set probe per prefix length in use, however many networks there are."""

    by_key: dict[str, Entry] = field(default_factory=dict)
    networks: dict[tuple[int, int], dict[int, str]] = field(default_factory=dict)  # -> network int -> key

    def put(self, entry: Entry) -> None:
        self.by_key[entry.key] = entry
        if entry.kind == "cidr":
            network = ipaddress.ip_network(entry.value)
            self.networks.setdefault((network.version, network.prefixlen), {})[int(network.network_address)] = entry.key

    def remove(self, key: str) -> None:
        entry = self.by_key.pop(key, None)
        if entry is not None and entry.kind == "cidr":
            network = ipaddress.ip_network(entry.value)
            slot = (network.version, network.prefixlen)
            self.networks.get(slot, {}).pop(int(network.network_address), None)
            if not self.networks.get(slot, True):
                del self.networks[slot]

    def network_key(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
        """The key of the longest network holding `address`."""
        bits = address.max_prefixlen
        value = int(address)
        for (version, prefixlen) in sorted(self.networks, key=lambda slot: -slot[1]):
            if version != address.version:
                continue
            masked = value >> (bits - prefixlen) << (bits - prefixlen) if prefixlen else 0
            key = self.networks[(version, prefixlen)].get(masked)
            if key is not None:
                return key
        return None


def _parents(domain: str) -> Iterator[str]:
    """The domain and every domain it is under ("a.b.test" -> a.b.test, b.test, test)."""
    labels = domain.split(".")
    for i in range(len(labels)):
        yield ".".join(labels[i:])


class SiteLists:
    """Both lists in memory, replayed from their topics and kept current (transport None: memory only)."""

    def __init__(self, transport: Transport | None, *, retry_every: float | None = None) -> None:
        self.transport = transport
        self.tables = {name: _Table() for name in LISTS}
        self._follower = tables.Follower(transport, self.apply, label="sitelists", retry_every=retry_every,
                                         on_caught_up=self._log_replayed)
        self.ignored = 0  # records that were not entries

    @property
    def ready(self) -> bool:
        return self._follower.ready

    async def start(self, timeout: float = 15.0) -> bool:
        """Replay both topics; return whether that finished within `timeout` (it goes on if not)."""
        return await self._follower.start(timeout)

    def _log_replayed(self) -> None:
        log.info("sitelists: replayed (%d block, %d allow entries)", len(self.tables[BLOCK].by_key),
                 len(self.tables[ALLOW].by_key))

    async def close(self) -> None:
        await self._follower.close()

    def apply(self, table: str, key: str, value: bytes | None) -> None:
        """Take one record from a topic: an entry, or a tombstone that removes one."""
        target = self.tables.get(table)
        if target is None:
            return
        if value is None:
            target.remove(key)
            return
        try:
            entry = _entry_from_record(table, key, value)
        except EntryError as exc:
            self.ignored += 1
            log.warning("sitelists: ignoring %s record %r: %s", table, key, exc)
            return
        target.put(entry)

    def put(self, entry: Entry) -> None:
        """Add an entry locally only (tests, benchmarks); `write_entry` is the way for a site."""
        self.tables[entry.list].put(entry)

    def entries(self, list_name: str) -> list[Entry]:
        return sorted(self.tables[list_name].by_key.values(), key=lambda e: (e.kind, e.value))

    def get(self, list_name: str, kind: str, value: str) -> Entry | None:
        return self.tables[list_name].by_key.get(f"{kind}:{value}")

    # -- lookups (the subject is already normalised: lower case, IDNA) --

    def match_address(self, list_name: str, address: str) -> Match | None:
        entry = self.get(list_name, "address", address)
        return Match(entry, address) if entry else None

    def match_domain(self, list_name: str, domain: str) -> Match | None:
        """An entry for the domain or any domain it is under."""
        by_key = self.tables[list_name].by_key
        for name in _parents(domain):
            entry = by_key.get(f"domain:{name}")
            if entry is not None:
                return Match(entry, domain)
        return None

    def match_sender(self, list_name: str, address: str) -> Match | None:
        """The address itself, else its domain (or a parent)."""
        found = self.match_address(list_name, address)
        if found is None and "@" in address:
            found = self.match_domain(list_name, address.rpartition("@")[2])
            found = Match(found.entry, address) if found else None
        return found

    def match_ip(self, list_name: str, ip: str) -> Match | None:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        table = self.tables[list_name]
        key = table.network_key(address)
        return Match(table.by_key[key], str(address)) if key is not None else None

    def match_sha256(self, list_name: str, digest: str) -> Match | None:
        entry = self.get(list_name, "sha256", digest)
        return Match(entry, digest) if entry else None


# ---- changing the lists ---------------------------------------------------------------------------


def kafka_transport(settings: Settings, client_id: str = "sitelists") -> KafkaTransport:
    topics = Topics.from_settings(settings)
    return KafkaTransport(settings.kafka, {BLOCK: topics.sitelist_block, ALLOW: topics.sitelist_allow},
                          client_id=client_id)


async def _write(transport: Transport, table: str, key: str, value: bytes | None) -> None:
    delivery = await transport.write(table, key, value)
    if delivery is not None:
        await delivery  # acks=all: the record is in the log when this returns


async def write_entry(transport: Transport, entry: Entry) -> None:
    """Add (or replace) an entry; returns once the log has it. The transport must be open."""
    await _write(transport, entry.list, entry.key, entry.encode())


async def remove_entry(transport: Transport, list_name: str, kind: str, value: str) -> None:
    """Write the tombstone of an entry (normalised key); the transport must be open."""
    await _write(transport, list_name, f"{kind}:{value}", None)
