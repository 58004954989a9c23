"""A small async stub resolver with typed answers, for the DNS-based checks.

`Resolver` asks one recursive (or, locally, authoritative) name server over UDP, falling back to
TCP when an answer is truncated, and returns an `Answer` whose `status` says what happened:

    ok        the name has records of the asked type (`records` holds them as text)
    nxdomain  the name does not exist (for any type)
    nodata    the name exists but has no records of this type
    tempfail  no usable answer: timeout, network error, SERVFAIL, REFUSED, a malformed response

so a caller cannot mistake "could not ask" for "does not exist". Nothing here raises for a DNS
failure; only a name that cannot be a DNS name raises `BadName` (a `ValueError`).

Records are plain strings: an address for A/AAAA, a host name (lower case, no final dot; the root
is ".") for PTR/CNAME/NS, "<preference> <exchange>" for MX ("0 ." is a null MX, RFC 7505), and the
character-strings of one TXT record joined into one string (SPF, DKIM and DMARC read them so).
A CNAME chain in the response is followed to the records of the asked type.

Timeouts: `timeout` (from `[dns] timeout`) is the budget of one lookup; it is split over `tries`
UDP attempts (2 by default, as glibc's stub resolver retries), so a lost datagram costs one retry,
not a failed lookup. Every attempt is bounded by `asyncio.timeout` whatever the transport does.

Cache: answers with status ok, nxdomain or nodata are kept for their TTL (the SOA minimum for
negative answers, RFC 2308), capped at `cache_max_ttl` / `cache_negative_max_ttl` seconds, in an
LRU of `cache_size` entries. A failure the server answered (SERVFAIL, REFUSED, a malformed response)
is kept `cache_tempfail_ttl` seconds, 1 by default, as BIND's `servfail-ttl` (RFC 2308 section 7.1
allows up to five minutes): a broken or refusing server is not asked again for every message while
mail arrives. A timeout or network error is never cached; the next lookup asks again.
`cache_size = 0` turns the cache off.

The transport (`UdpTcpTransport` by default) is a callable `(request, timeout) -> response`, so
tests can swap it for one that returns SERVFAIL or never answers.
"""
from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import dns.asyncquery
import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.reversename

from pipeline.metrics import DNS_UP

__all__ = [
    "Answer",
    "BadName",
    "Resolver",
    "Status",
    "Transport",
    "UdpTcpTransport",
    "dnsbl_name",
    "is_null_mx",
    "mx_hosts",
    "normalize_ip",
    "rhsbl_name",
]

log = logging.getLogger(__name__)

Status = Literal["ok", "nxdomain", "nodata", "tempfail"]
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_TRIES = 2
DEFAULT_CACHE_SIZE = 10_000
DEFAULT_CACHE_MAX_TTL = 300.0  # seconds a positive answer may be reused, whatever its TTL
DEFAULT_CACHE_NEGATIVE_MAX_TTL = 60.0  # the same for NXDOMAIN / NODATA
DEFAULT_CACHE_TEMPFAIL_TTL = 1.0  # seconds a failure the server answered (SERVFAIL, REFUSED) is reused
# optional [dns] keys passed on by Resolver.from_settings
SETTINGS_OPTIONS = ("tries", "cache_size", "cache_max_ttl", "cache_negative_max_ttl", "cache_tempfail_ttl")
EDNS_PAYLOAD = 1232  # the DNS flag day 2020 size: no fragmentation, few TCP fallbacks


class BadName(ValueError):
    """The text cannot be a DNS name (empty label, label over 63 or name over 255 octets, bad IDN)."""


@dataclass(frozen=True, slots=True)
class Answer:
    """The outcome of one lookup; `error` says why for a tempfail (for logs and Decision.detail)."""

    name: str  # the name asked about, without the final dot
    rdtype: str  # "A", "MX", ...
    status: Status
    records: tuple[str, ...] = ()
    ttl: int = 0
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def tempfail(self) -> bool:
        return self.status == "tempfail"

    def describe(self) -> str:
        """Short text for operators: "mx.good.test/A ok 127.0.2.10", "x.test/MX tempfail (timeout)"."""
        if self.ok:
            return f"{self.name}/{self.rdtype} {','.join(self.records)}"
        if self.tempfail:
            return f"{self.name}/{self.rdtype} tempfail ({self.error})"
        return f"{self.name}/{self.rdtype} {self.status}"


class Transport(Protocol):
    async def __call__(self, request: dns.message.Message, timeout: float) -> dns.message.Message: ...


class UdpTcpTransport:
    """Ask one server: UDP, and TCP when the UDP answer is truncated."""

    def __init__(self, nameserver: str, port: int = 53) -> None:
        self.nameserver = nameserver
        self.port = port

    async def __call__(self, request: dns.message.Message, timeout: float) -> dns.message.Message:
        response, _used_tcp = await dns.asyncquery.udp_with_fallback(
            request, self.nameserver, timeout=timeout, port=self.port)
        return response


# ---- names ----------------------------------------------------------------------------------------


def normalize_ip(ip: str) -> IpAddress:
    """The client address as an ip_address; an IPv4-mapped IPv6 address (::ffff:a.b.c.d) is IPv4."""
    address = ipaddress.ip_address(ip.strip())
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@functools.lru_cache(maxsize=4096)  # names repeat (the same zones, senders, clients); a Name is immutable
def _to_name(text: str) -> dns.name.Name:
    if not text or not text.strip(". "):
        raise BadName(f"empty DNS name {text!r}")
    try:
        return dns.name.from_text(text)
    except (dns.exception.DNSException, UnicodeError, ValueError) as exc:
        raise BadName(f"not a DNS name {text!r}: {type(exc).__name__}") from None


@functools.lru_cache(maxsize=4096)
def _name_text(name: dns.name.Name) -> str:
    if name == dns.name.root:
        return "."
    return name.to_text(omit_final_dot=True).lower()


def dnsbl_name(ip: str, zone: str) -> str:
    """The DNSBL query name: reversed octets (IPv4) or nibbles (IPv6) under `zone` (RFC 5782 2.1, 2.4)."""
    address = normalize_ip(ip)
    origin = _to_name(zone)
    try:
        return _name_text(dns.reversename.from_address(str(address), v4_origin=origin, v6_origin=origin))
    except dns.name.NameTooLong:
        raise BadName(f"{address} under {zone!r} is over 255 octets") from None


def rhsbl_name(domain: str, zone: str) -> str:
    """The RHSBL query name: the domain itself under `zone` (RFC 5782 2.2)."""
    try:
        name = _to_name(domain).relativize(dns.name.root).concatenate(_to_name(zone))
    except dns.name.NameTooLong:
        raise BadName(f"{domain!r} under {zone!r} is over 255 octets") from None
    return _name_text(name)


# ---- record helpers -------------------------------------------------------------------------------


def mx_hosts(answer: Answer) -> list[tuple[int, str]]:
    """(preference, exchange) of an MX answer, lowest preference first."""
    pairs = []
    for record in answer.records:
        preference, _, exchange = record.partition(" ")
        pairs.append((int(preference), exchange))
    return sorted(pairs)


def is_null_mx(answer: Answer) -> bool:
    """RFC 7505: the domain's only MX record has the root "." as exchange (it accepts no mail)."""
    hosts = mx_hosts(answer) if answer.ok else []
    return len(hosts) == 1 and hosts[0][1] == "."


def _rdata_text(rdata: Any) -> str:
    rdtype = rdata.rdtype
    if rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        return str(rdata.address)
    if rdtype == dns.rdatatype.MX:
        return f"{rdata.preference} {_name_text(rdata.exchange)}"
    if rdtype in (dns.rdatatype.PTR, dns.rdatatype.CNAME, dns.rdatatype.NS):
        return _name_text(rdata.target)
    if rdtype == dns.rdatatype.TXT:
        return b"".join(rdata.strings).decode("utf-8", "replace")
    return rdata.to_text()


def _answer_from(name: str, rdtype: str, response: dns.message.Message) -> Answer:
    rcode = response.rcode()
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        return Answer(name, rdtype, "tempfail", error=f"rcode {dns.rcode.to_text(rcode)}")
    try:
        chain = response.resolve_chaining()  # type: ignore[attr-defined]
    except dns.exception.DNSException as exc:
        return Answer(name, rdtype, "tempfail", error=f"bad response: {type(exc).__name__}")
    ttl = int(chain.minimum_ttl)
    if rcode == dns.rcode.NXDOMAIN:
        return Answer(name, rdtype, "nxdomain", ttl=ttl)
    if chain.answer is None or len(chain.answer) == 0:
        return Answer(name, rdtype, "nodata", ttl=ttl)
    return Answer(name, rdtype, "ok", tuple(_rdata_text(r) for r in chain.answer), ttl=ttl)


# ---- cache ----------------------------------------------------------------------------------------


class _AnswerCache:
    """LRU of answers with a TTL each, capped; a tempfail (one the server answered) for `tempfail_ttl`."""

    def __init__(self, size: int, max_ttl: float, negative_max_ttl: float, tempfail_ttl: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.size = size
        self.max_ttl = max_ttl
        self.negative_max_ttl = negative_max_ttl
        self.tempfail_ttl = tempfail_ttl
        self.clock = clock
        self._entries: OrderedDict[tuple[str, str], tuple[float, Answer]] = OrderedDict()

    def get(self, key: tuple[str, str]) -> Answer | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, answer = entry
        if self.clock() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return answer

    def put(self, key: tuple[str, str], answer: Answer) -> None:
        if answer.tempfail:
            lifetime = self.tempfail_ttl
        else:
            lifetime = min(float(answer.ttl), self.max_ttl if answer.ok else self.negative_max_ttl)
        if self.size <= 0 or lifetime <= 0:
            return
        self._entries[key] = (self.clock() + lifetime, answer)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


# ---- the resolver ---------------------------------------------------------------------------------


class Resolver:
    """Typed lookups against one name server; see the module docstring for statuses and caching."""

    def __init__(
        self,
        nameserver: str,
        port: int = 53,
        timeout: float = 3.0,
        *,
        tries: int = DEFAULT_TRIES,
        transport: Transport | Callable[[dns.message.Message, float], Awaitable[dns.message.Message]] | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
        cache_max_ttl: float = DEFAULT_CACHE_MAX_TTL,
        cache_negative_max_ttl: float = DEFAULT_CACHE_NEGATIVE_MAX_TTL,
        cache_tempfail_ttl: float = DEFAULT_CACHE_TEMPFAIL_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if timeout <= 0 or tries < 1:
            raise ValueError("timeout must be positive and tries at least 1")
        self.nameserver = nameserver
        self.port = port
        self.timeout = timeout
        self.tries = tries
        self.transport = transport or UdpTcpTransport(nameserver, port)
        self.cache = _AnswerCache(cache_size, cache_max_ttl, cache_negative_max_ttl, cache_tempfail_ttl, clock)

    @classmethod
    def from_settings(cls, settings: Any, **options: Any) -> Resolver:
        """From `pipeline.settings.DnsSettings`: nameserver, port, timeout, and the keys of
        `SETTINGS_OPTIONS` where the settings have them (keyword `options` win)."""
        for key in SETTINGS_OPTIONS:
            if hasattr(settings, key):
                options.setdefault(key, getattr(settings, key))
        return cls(settings.nameserver, settings.port, settings.timeout, **options)

    async def close(self) -> None:
        """Nothing stays open between lookups; this drops the cache."""
        self.cache.clear()

    # -- lookups by type --

    async def a(self, name: str) -> Answer:
        return await self.query(name, "A")

    async def aaaa(self, name: str) -> Answer:
        return await self.query(name, "AAAA")

    async def mx(self, name: str) -> Answer:
        return await self.query(name, "MX")

    async def txt(self, name: str) -> Answer:
        return await self.query(name, "TXT")

    async def ptr(self, ip: str) -> Answer:
        """The PTR records of an IPv4 or IPv6 address (ValueError if `ip` is not one)."""
        reverse = dns.reversename.from_address(str(normalize_ip(ip)))
        return await self.query(_name_text(reverse), "PTR")

    async def dnsbl(self, ip: str, zone: str) -> Answer:
        """A records of the client address in a DNSBL: ok = listed (the codes), nxdomain = not listed."""
        return await self.query(dnsbl_name(ip, zone), "A")

    async def rhsbl(self, domain: str, zone: str) -> Answer:
        """A records of a domain in an RHSBL (domain list): ok = listed, nxdomain = not listed."""
        return await self.query(rhsbl_name(domain, zone), "A")

    # -- the general lookup --

    async def query(self, name: str, rdtype: str) -> Answer:
        """Records of type `rdtype` ("A", "TXT", ...) for `name`; raises only BadName."""
        qname = _to_name(name)
        rdtype = dns.rdatatype.to_text(dns.rdatatype.from_text(rdtype))
        key = (_name_text(qname), rdtype)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        answer, answered = await self._ask(qname, rdtype)
        if answer.tempfail:
            log.debug("DNS %s", answer.describe())
        if answered:  # a timeout or network error says nothing about the next lookup
            self.cache.put(key, answer)
        return answer

    async def _ask(self, qname: dns.name.Name, rdtype: str) -> tuple[Answer, bool]:
        """The answer, and whether the server gave it (False: a timeout or network error)."""
        name = _name_text(qname)
        request = dns.message.make_query(qname, rdtype, use_edns=0, payload=EDNS_PAYLOAD)
        per_try = self.timeout / self.tries
        error = ""
        for _ in range(self.tries):
            try:
                async with asyncio.timeout(per_try):
                    response = await self.transport(request, per_try)
            except (TimeoutError, dns.exception.Timeout):
                error = f"no answer from the name server in {per_try:g}s"
                continue  # a lost datagram: ask again
            except (OSError, EOFError, dns.exception.DNSException) as exc:
                DNS_UP.set(0)
                return Answer(name, rdtype, "tempfail", error=f"{type(exc).__name__}: {exc}"), False
            DNS_UP.set(1)
            return _answer_from(name, rdtype, response), True
        DNS_UP.set(0)
        return Answer(name, rdtype, "tempfail", error=error), False
