"""Greylisting state shared by every ingress instance through two compacted Kafka topics.

Two tables, each a compacted topic keyed by a string, each value a small JSON object
``{"first_seen", "last_seen", "passes", "expires"}`` (seconds since the epoch; `passes` counts
passed retries):

- ``<prefix>.greylist.triplets``, keyed ``<client net>|<sender>|<recipient>``: a triplet waiting
  for its retry (`passes` 0, `expires` = first attempt + retry window) or one that passed
  (`passes` 1, `expires` = last use + whitelist lifetime);
- ``<prefix>.greylist.clients``, keyed ``ip:<client net>`` and ``domain:<sender domain>|<client
  net>``: how many retries passed from that client (and sender domain); at the threshold the
  client skips greylisting until `expires` (last use + whitelist lifetime).

`GreylistStore.start` replays both topics from the beginning into local dicts and returns once it
has read up to the end offsets it found at start; a background task then keeps reading (its own
writes and those of the other instances). Lookups (`GreylistStore.decide`) never touch the network:
they read the dicts, change them at once, and queue the change for a writer task, which hands it
to the producer (acks=all). A write that fails is logged and dropped: the local state stays, and the
decision it records was already made. Expired entries are ignored by lookups; a sweep (every
minute) deletes them locally and writes tombstones, which every instance applies (several
instances writing the same tombstone is harmless).

Conflicts between instances: for one key, the record with the later `last_seen` wins, so an echo of
an older write never undoes a newer one. A tombstone deletes only an entry that is expired locally
as well. Two instances that see the first attempt of a triplet at nearly the same time both write
it; the later `first_seen` wins, and the worst case is one extra delay for that sender.

The log itself is behind `Transport` (`pipeline.tables`, shared with the site's lists):
`KafkaTransport` for the ingress, `MemoryTransport` over a shared `MemoryLog` for unit tests and
the benchmark.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from pipeline import tables
from pipeline.tables import Apply, KafkaTransport, MemoryTransport, TopicMissing, Transport

__all__ = [
    "TRIPLETS",
    "CLIENTS",
    "DELAYED",
    "TOO_EARLY",
    "PASSED_AFTER_RETRY",
    "PASSED",
    "AUTO_WHITELISTED",
    "GreylistPolicy",
    "Record",
    "Verdict",
    "GreylistStore",
    "Transport",
    "Apply",
    "MemoryLog",
    "MemoryTransport",
    "KafkaTransport",
    "TopicMissing",
    "mask_client",
    "triplet_key",
    "client_key",
    "domain_key",
]

log = logging.getLogger(__name__)

# table names (the suffixes of the topics)
TRIPLETS = "triplets"
CLIENTS = "clients"

# outcomes of GreylistStore.decide
DELAYED = "delayed"  # first attempt of this triplet: refuse with 451
TOO_EARLY = "too_early"  # retried before the delay passed: refuse with 451 again
PASSED_AFTER_RETRY = "passed_after_retry"  # the retry came after the delay, within the window
PASSED = "passed"  # a triplet that passed before, still within its lifetime
AUTO_WHITELISTED = "auto_whitelisted"  # the client (or its sender domain) passed often enough


@dataclass(frozen=True, slots=True)
class GreylistPolicy:
    """The rules, in seconds."""

    delay: float = 300.0
    retry_window: float = 86_400.0
    auto_whitelist_after: int = 5  # passed retries from a client net; 0: never
    auto_whitelist_domain_after: int = 5  # passed retries from a sender domain + client net; 0: never
    whitelist_lifetime: float = 35 * 86_400.0
    # a use of a passed triplet or whitelisted client rewrites its entry at most this often
    refresh_every: float = 3_600.0


@dataclass(frozen=True, slots=True)
class Record:
    """One table entry as it is stored in the topic."""

    first_seen: float
    last_seen: float
    passes: int
    expires: float

    def encode(self) -> bytes:
        return orjson.dumps({"first_seen": self.first_seen, "last_seen": self.last_seen,
                             "passes": self.passes, "expires": self.expires})

    @classmethod
    def decode(cls, raw: bytes) -> Record:
        """Raise ValueError for anything that is not a record."""
        try:
            data = orjson.loads(raw)
            return cls(float(data["first_seen"]), float(data["last_seen"]), int(data["passes"]),
                       float(data["expires"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a greylist record: {exc}") from None


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: str  # one of DELAYED, TOO_EARLY, PASSED_AFTER_RETRY, PASSED, AUTO_WHITELISTED
    retry_in: int = 0  # whole seconds until a retry can pass (DELAYED, TOO_EARLY)

    @property
    def delayed(self) -> bool:
        return self.outcome in (DELAYED, TOO_EARLY)


def mask_client(ip: str, v4_prefix: int, v6_prefix: int) -> str:
    """The client's network: "192.0.2.0/24" for ("192.0.2.7", 24, 64). Raises ValueError."""
    address = ipaddress.ip_address(ip)
    if address.version == 6 and address.ipv4_mapped is not None:  # ::ffff:192.0.2.7 is IPv4
        address = address.ipv4_mapped
    prefix = v4_prefix if address.version == 4 else v6_prefix
    return str(ipaddress.ip_network((address, prefix), strict=False))


def triplet_key(net: str, sender: str, recipient: str) -> str:
    return f"{net}|{sender}|{recipient}"


def client_key(net: str) -> str:
    return f"ip:{net}"


def domain_key(domain: str, net: str) -> str:
    return f"domain:{domain}|{net}"


def _sender_domain(sender: str) -> str:
    return sender.rpartition("@")[2]


# ---- transports: the shared machinery of pipeline.tables, with this store's two tables --------


class MemoryLog(tables.MemoryLog):
    """Both greylisting tables in memory (see `pipeline.tables.MemoryLog`)."""

    def __init__(self) -> None:
        super().__init__((TRIPLETS, CLIENTS))


# ---- the store ------------------------------------------------------------------------------------


class GreylistStore:
    """The local copy of both tables, the greylisting decision, and the tasks that sync them.

    `transport` None: a store that only lives in memory (no log at all). `clock` returns seconds
    since the epoch (the entries are shared between hosts, so it is wall-clock time).
    """

    def __init__(self, transport: Transport | None, policy: GreylistPolicy = GreylistPolicy(), *,
                 clock: Callable[[], float] = time.time, sweep_every: float = 60.0,
                 retry_every: float | None = None, max_pending_writes: int = 100_000) -> None:
        self.transport = transport
        self.policy = policy
        self.clock = clock
        self.sweep_every = sweep_every
        self.retry_every = retry_every
        self.triplets: dict[str, Record] = {}
        self.clients: dict[str, Record] = {}
        self._tables = {TRIPLETS: self.triplets, CLIENTS: self.clients}
        self._caught_up = asyncio.Event()
        self._writes: asyncio.Queue[tuple[str, str, bytes | None]] = asyncio.Queue(max_pending_writes)
        self._tasks: list[asyncio.Task] = []
        self.writes_dropped = 0  # not queued: the queue was full
        self.writes_failed = 0  # queued, but the log refused them
        self._writes_failing = False

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True once the store has read everything the log held at start."""
        return self._caught_up.is_set()

    async def start(self, timeout: float = 15.0) -> bool:
        """Replay the log; return whether that finished within `timeout` (it goes on if not)."""
        if self.transport is None:
            self._caught_up.set()
            return True
        self._tasks = [asyncio.create_task(self._follow_log(), name="greylist-follow"),
                       asyncio.create_task(self._write_queued(), name="greylist-write"),
                       asyncio.create_task(self._sweep_periodically(), name="greylist-sweep")]
        try:
            await asyncio.wait_for(self._caught_up.wait(), timeout)
        except TimeoutError:
            log.warning("greylist: state not replayed within %.0fs; still trying", timeout)
        return self.ready

    async def close(self, flush_timeout: float = 5.0) -> None:
        """Hand the queued writes to the log (for at most `flush_timeout`), then stop."""
        if self._tasks and self.ready:
            try:
                await asyncio.wait_for(self._writes.join(), flush_timeout)
            except TimeoutError:
                log.warning("greylist: %d writes not flushed at close", self._writes.qsize())
        for task in self._tasks:
            task.cancel()
        if self._tasks:  # bounded: a Kafka client cancelled while connecting may take long to unwind
            _, stuck = await asyncio.wait(self._tasks, timeout=flush_timeout)
            if stuck:
                log.warning("greylist: %d sync tasks still unwinding at close; leaving them", len(stuck))
        self._tasks = []
        if self.transport is not None:
            await self.transport.close()

    async def _follow_log(self) -> None:
        await tables.follow_tables(self.transport, self.apply, self._caught_up, label="greylist",
                                      retry_every=self.retry_every, on_caught_up=self._log_replayed)

    def _log_replayed(self) -> None:
        log.info("greylist: state replayed (%d triplets, %d clients)", len(self.triplets), len(self.clients))

    async def _write_queued(self) -> None:
        while True:
            table, key, value = await self._writes.get()
            try:
                delivery = await self.transport.write(table, key, value)
            except Exception as exc:  # the decision was made locally; the log misses this one
                self._write_failed(exc)
            else:
                if delivery is None:
                    self._write_succeeded()
                else:
                    delivery.add_done_callback(self._delivered)
            finally:
                self._writes.task_done()

    def _delivered(self, delivery: asyncio.Future) -> None:
        if delivery.cancelled():
            return
        if delivery.exception() is None:
            self._write_succeeded()
        else:
            self._write_failed(delivery.exception())

    def _write_failed(self, exc: BaseException) -> None:
        """Count a lost write; log only when writing starts failing (a broker outage means many)."""
        self.writes_failed += 1
        if not self._writes_failing:
            self._writes_failing = True
            log.warning("greylist: cannot write to the log (%s: %s); decisions are kept locally until it is back",
                        type(exc).__name__, exc)

    def _write_succeeded(self) -> None:
        if self._writes_failing:
            self._writes_failing = False
            log.info("greylist: writing to the log again (%d writes lost so far)", self.writes_failed)

    async def _sweep_periodically(self) -> None:
        await self._caught_up.wait()
        while True:
            removed = self.sweep()
            if removed:
                log.info("greylist: %d expired entries removed", removed)
            await asyncio.sleep(self.sweep_every)

    # -- the log ------------------------------------------------------------------------------

    def apply(self, table: str, key: str, value: bytes | None) -> None:
        """Take one record from the log: the later `last_seen` wins; tombstones remove expired entries."""
        entries = self._tables.get(table)
        if entries is None:
            return
        current = entries.get(key)
        if value is None:
            if current is not None and current.expires <= self.clock():
                del entries[key]
            return
        try:
            record = Record.decode(value)
        except ValueError as exc:
            log.warning("greylist: ignoring %s entry %r: %s", table, key, exc)
            return
        if current is None or record.last_seen >= current.last_seen:
            entries[key] = record

    def sweep(self) -> int:
        """Delete the expired entries and write their tombstones; returns how many."""
        now = self.clock()
        removed = 0
        for table, entries in self._tables.items():
            expired = [key for key, record in entries.items() if record.expires <= now]
            for key in expired:
                del entries[key]
                self._queue_write(table, key, None)
            removed += len(expired)
        return removed

    def _put(self, table: str, key: str, record: Record) -> None:
        self._tables[table][key] = record
        self._queue_write(table, key, record.encode())

    def _queue_write(self, table: str, key: str, value: bytes | None) -> None:
        if self.transport is None:
            return
        try:
            self._writes.put_nowait((table, key, value))
        except asyncio.QueueFull:
            if self.writes_dropped == 0:
                log.warning("greylist: write queue full; further writes are kept locally only")
            self.writes_dropped += 1

    # -- the decision -------------------------------------------------------------------------

    def decide(self, net: str, sender: str, recipient: str) -> Verdict:
        """Greylist one (client net, sender, recipient); `sender` and `recipient` lower-case.

        Never waits: the answer comes from the local tables, and what changes is queued for the log.
        """
        now = self.clock()
        p = self.policy
        if (self._whitelisted(client_key(net), p.auto_whitelist_after, now)
                or self._whitelisted(domain_key(_sender_domain(sender), net), p.auto_whitelist_domain_after, now)):
            return Verdict(AUTO_WHITELISTED)
        key = triplet_key(net, sender, recipient)
        entry = self._live(self.triplets, key, now)
        if entry is None:  # new, or its retry window (or lifetime) is over: start over
            self._put(TRIPLETS, key, Record(now, now, 0, now + p.retry_window))
            return Verdict(DELAYED, math.ceil(p.delay))
        if entry.passes:
            self._refresh(TRIPLETS, key, entry, now)
            return Verdict(PASSED)
        allowed_at = entry.first_seen + p.delay
        if now < allowed_at:
            return Verdict(TOO_EARLY, math.ceil(allowed_at - now))
        self._put(TRIPLETS, key, Record(entry.first_seen, now, 1, now + p.whitelist_lifetime))
        self._count_pass(client_key(net), now)
        self._count_pass(domain_key(_sender_domain(sender), net), now)
        return Verdict(PASSED_AFTER_RETRY)

    @staticmethod
    def _live(entries: dict[str, Record], key: str, now: float) -> Record | None:
        entry = entries.get(key)
        return entry if entry is not None and entry.expires > now else None

    def _whitelisted(self, key: str, threshold: int, now: float) -> bool:
        if threshold <= 0:
            return False
        entry = self._live(self.clients, key, now)
        if entry is None or entry.passes < threshold:
            return False
        self._refresh(CLIENTS, key, entry, now)
        return True

    def _refresh(self, table: str, key: str, entry: Record, now: float) -> None:
        if now - entry.last_seen >= self.policy.refresh_every:
            self._put(table, key, Record(entry.first_seen, now, entry.passes, now + self.policy.whitelist_lifetime))

    def _count_pass(self, key: str, now: float) -> None:
        entry = self._live(self.clients, key, now)
        first_seen, passes = (entry.first_seen, entry.passes + 1) if entry else (now, 1)
        self._put(CLIENTS, key, Record(first_seen, now, passes, now + self.policy.whitelist_lifetime))
