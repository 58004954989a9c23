"""What the DNS-based checks (and the blocklist stage) share: weighted DNS lists, the skip rule and the sender's domain.

DNS lists (used by `dnsbl` and `rhsbl`) are configured like Postfix postscreen's `dnsbl_sites`,
as data: each `[[checks.<name>.sites]]` entry is one zone, an optional filter of return codes and
a weight::

    [[checks.dnsbl.sites]]
    zone = "zen.dnsbl.test"
    codes = ["127.0.0.2-127.0.0.3"]   # single addresses or ranges "first-last"
    weight = 3
    name = "zen"                       # shown in the SMTP reply instead of the zone (optional)

An entry matches when any A record of the answer lies in one of its `codes` (with no `codes`: any
address in 127.0.0.0/8 except 127.255.255.0/24, which lists such as Spamhaus use for "query
refused" errors, not for listings; RFC 5782 2.3). Each matching entry adds its weight once, however
many of its codes matched; a zone may appear in several entries with different codes and weights,
and is looked up once. Weights may be negative (an allowlist such as a DNSWL). The check refuses
when the sum reaches `threshold`.

The sender domain: the part after the last "@" of MAIL FROM, lower-cased, without a final dot;
an address literal ("[192.0.2.1]") is returned as written. `SenderSyntaxError` for anything that
has no domain part a DNS name could be.
"""
from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from pipeline.clients.dns import Answer, BadName, rhsbl_name
from pipeline.settings import ConfigError

__all__ = [
    "ON_ERROR",
    "ListSite",
    "ListResult",
    "Lookup",
    "SiteHit",
    "SenderSyntaxError",
    "evaluate",
    "sender_domain",
    "validate_list_settings",
]

ON_ERROR = ("tempfail", "skip")
_LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
_ERROR_CODES = ipaddress.ip_network("127.255.255.0/24")

Lookup = Callable[[str, str], Awaitable[Answer]]  # (subject, zone) -> Answer: Resolver.dnsbl / .rhsbl


# ---- list sites -----------------------------------------------------------------------------------


def _parse_code_range(text: str) -> tuple[int, int]:
    """A code ("127.0.0.2") or range ("127.0.0.2-127.0.0.11") as integers; ValueError if neither."""
    first, sep, last = text.strip().partition("-")
    try:
        low = int(ipaddress.IPv4Address(first.strip()))
        high = int(ipaddress.IPv4Address(last.strip())) if sep else low
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 address or a range such as 127.0.0.2-127.0.0.11") from None
    if high < low:
        raise ValueError(f"{text!r} ends before it starts")
    return low, high


@dataclass(frozen=True, slots=True)
class ListSite:
    """One `[[checks.<name>.sites]]` entry: zone, return-code filter, weight, name for replies."""

    zone: str = ""
    codes: list[str] = field(default_factory=list)
    weight: int = 1
    name: str = ""  # in the SMTP reply instead of the zone (a zone may hold an access key)

    @property
    def shown_name(self) -> str:
        return self.name or self.zone

    def matching(self, records: Sequence[str]) -> tuple[str, ...]:
        """The records of a listed answer this entry counts."""
        ranges = [_parse_code_range(code) for code in self.codes]
        matched = []
        for record in records:
            try:
                address = ipaddress.IPv4Address(record)
            except ValueError:
                continue
            if ranges:
                hit = any(low <= int(address) <= high for low, high in ranges)
            else:
                hit = address in _LOOPBACK and address not in _ERROR_CODES
            if hit:
                matched.append(record)
        return tuple(matched)


def validate_list_settings(section: str, sites: Sequence[ListSite], threshold: int, on_error: str,
                           *, root: str = "checks", sites_key: str = "sites") -> None:
    """The rules of a list check's settings beyond their types (ConfigError naming the key
    `<root>.<section>.<sites_key>[i]...`)."""
    for i, site in enumerate(sites):
        key = f"{root}.{section}.{sites_key}[{i}]"
        if not site.zone:
            raise ConfigError(f"{key}.zone: required (the list's DNS zone)")
        try:
            rhsbl_name("x", site.zone)
            for code in site.codes:
                _parse_code_range(code)
        except BadName as exc:
            raise ConfigError(f"{key}.zone: {exc}") from None
        except ValueError as exc:
            raise ConfigError(f"{key}.codes: {exc}") from None
    if threshold < 1:
        raise ConfigError(f"{root}.{section}.threshold: expected at least 1, got {threshold}")
    if on_error not in ON_ERROR:
        raise ConfigError(f"{root}.{section}.on_error: expected tempfail or skip, got {on_error!r}")


# ---- lookups and the score ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SiteHit:
    site: ListSite
    subject: str  # the address or domain that is listed
    records: tuple[str, ...]  # the return codes that matched


@dataclass(frozen=True, slots=True)
class ListResult:
    score: int
    hits: tuple[SiteHit, ...]
    errors: tuple[Answer, ...]  # lookups that failed temporarily

    @property
    def top(self) -> SiteHit:
        """The hit with the largest weight (the first of equals): the list named in a reply."""
        return max(self.hits, key=lambda hit: hit.site.weight)

    def detail(self, threshold: int) -> str:
        parts = [f"score {self.score}/{threshold}"]
        parts += [f"{hit.subject} in {hit.site.zone} {','.join(hit.records)} ({hit.site.weight:+d})"
                  for hit in self.hits]
        parts += [f"tempfail {answer.describe()}" for answer in self.errors]
        return "; ".join(parts)


async def _lookup_or_none(lookup: Lookup, subject: str, zone: str) -> Answer | None:
    try:
        return await lookup(subject, zone)
    except BadName:  # the name under the zone is too long to exist: it cannot be listed
        return None


async def evaluate(sites: Sequence[ListSite], subjects: Sequence[str], lookup: Lookup) -> ListResult:
    """Look every subject up in every zone (concurrently, each zone once) and add up the weights.

    A site counts once even when several subjects match it (the sender domain and the HELO name).
    """
    zones = list(dict.fromkeys(site.zone for site in sites))
    pairs = [(subject, zone) for subject in subjects for zone in zones]
    answers = dict(zip(pairs, await asyncio.gather(*(_lookup_or_none(lookup, s, z) for s, z in pairs))))
    hits = []
    for site in sites:
        for subject in subjects:
            answer = answers[(subject, site.zone)]
            matched = site.matching(answer.records) if answer is not None and answer.ok else ()
            if matched:
                hits.append(SiteHit(site, subject, matched))
                break
    errors = tuple(answer for answer in answers.values() if answer is not None and answer.tempfail)
    return ListResult(sum(hit.site.weight for hit in hits), tuple(hits), errors)


# ---- the sender domain ----------------------------------------------------------------------------


class SenderSyntaxError(ValueError):
    """MAIL FROM has no usable domain part."""


def sender_domain(sender: str) -> str:
    """The domain of a (non-null) envelope sender: lower case, no final dot; literals as written."""
    if any(c.isspace() or c in "<>" or ord(c) < 32 for c in sender):
        raise SenderSyntaxError("white space, control characters or angle brackets")
    local, at, domain = sender.rpartition("@")
    if not at or not local or not domain:
        raise SenderSyntaxError("no local part or no domain")
    if domain.startswith("["):
        if not domain.endswith("]") or len(domain) < 3:
            raise SenderSyntaxError("bad address literal")
        return domain
    domain = domain.removesuffix(".").lower()
    labels = domain.split(".")
    if len(domain) > 253 or not all(0 < len(label) <= 63 for label in labels):
        raise SenderSyntaxError("empty or overlong label in the domain")
    if any(c in domain for c in "@[]\\\"(),;:"):
        raise SenderSyntaxError("characters a domain cannot hold")
    return domain
