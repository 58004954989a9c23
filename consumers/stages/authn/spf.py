"""SPF (RFC 7208): `check_host()` on our async resolver.

Evaluates the mechanisms all, include, a, mx, ptr, ip4, ip6, exists and the modifier redirect,
with macro expansion (section 7), the limit of 10 DNS-querying terms (section 4.6.4) and of 2 void
lookups (NXDOMAIN/NODATA answers, section 4.6.4). `exp=` is parsed but not fetched: the gateway
never returns SPF explanations to a client. A DNS temporary failure anywhere is `temperror`.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Literal

from pipeline.clients.dns import Answer, BadName, IpAddress, Resolver, mx_hosts, normalize_ip

__all__ = ["SpfResult", "SpfOutcome", "check_host", "spf_identity"]

SpfResult = Literal["pass", "fail", "softfail", "neutral", "none", "permerror", "temperror"]

DNS_LOOKUP_LIMIT = 10  # terms that cause DNS queries (RFC 7208 4.6.4)
VOID_LOOKUP_LIMIT = 2
MX_NAMES_LIMIT = 10  # address lookups per mx mechanism
PTR_NAMES_LIMIT = 10
QUALIFIERS: dict[str, SpfResult] = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
MECHANISMS = frozenset({"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"})
_VERSION = re.compile(r"^v=spf1(?: |$)", re.IGNORECASE)
_MODIFIER = re.compile(r"^([a-z][a-z0-9_.-]*)=(.*)$", re.IGNORECASE)
_DIRECTIVE = re.compile(r"^([+?~-]?)([a-z][a-z0-9_.-]*)(?:[:](.*?))?((?:/\d+)?(?://\d+)?)$", re.IGNORECASE)
_MACRO = re.compile(r"%\{([slodiphcrtv])(\d*)(r?)([.+,/_=-]*)\}|%%|%_|%-|%", re.IGNORECASE)


class _PermError(Exception):
    pass


class _TempError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class SpfOutcome:
    result: SpfResult
    domain: str  # the domain checked (MAIL FROM domain, or the HELO name)
    identity: Literal["mailfrom", "helo"]
    reason: str = ""  # why: the matching mechanism or the error
    lookups: int = 0


@dataclass
class _Context:
    """State shared by one check_host() evaluation and its includes and redirects."""

    resolver: Resolver
    ip: IpAddress
    sender: str  # local@domain
    helo: str
    lookups: int = 0
    voids: int = 0
    trail: list[str] = field(default_factory=list)

    def count_lookup(self, term: str) -> None:
        self.lookups += 1
        if self.lookups > DNS_LOOKUP_LIMIT:
            raise _PermError(f"more than {DNS_LOOKUP_LIMIT} DNS lookups (at {term})")

    def checked(self, answer: Answer) -> Answer:
        """Turn tempfail into _TempError and count void answers."""
        if answer.tempfail:
            raise _TempError(answer.describe())
        if answer.status in ("nxdomain", "nodata"):
            self.voids += 1
            if self.voids > VOID_LOOKUP_LIMIT:
                raise _PermError(f"more than {VOID_LOOKUP_LIMIT} void lookups (at {answer.name})")
        return answer

    async def query(self, name: str, rdtype: str) -> Answer:
        try:
            return self.checked(await self.resolver.query(name, rdtype))
        except BadName as exc:
            raise _PermError(str(exc)) from None


def spf_identity(mail_from: str, helo: str) -> tuple[str, str, Literal["mailfrom", "helo"]]:
    """(sender, domain, identity): MAIL FROM, or postmaster@HELO for the null sender (RFC 7208 2.4)."""
    if mail_from and "@" in mail_from:
        local, _, domain = mail_from.rpartition("@")
        return f"{local or 'postmaster'}@{domain}", domain.lower().rstrip("."), "mailfrom"
    name = helo.strip().lower().rstrip(".")
    return f"postmaster@{name}", name, "helo"


def _valid_domain(domain: str) -> bool:
    labels = domain.split(".")
    return (len(labels) >= 2 and all(0 < len(label) <= 63 for label in labels) and len(domain) <= 253
            and not domain.startswith("["))


async def check_host(resolver: Resolver, ip: str, mail_from: str, helo: str) -> SpfOutcome:
    """The SPF result for a client `ip` sending as `mail_from` (or as `helo` for the null sender)."""
    sender, domain, identity = spf_identity(mail_from, helo)
    if not _valid_domain(domain):
        return SpfOutcome("none", domain, identity, reason=f"not a domain name: {domain!r}")
    try:
        address = normalize_ip(ip)
    except ValueError:
        return SpfOutcome("permerror", domain, identity, reason=f"not an IP address: {ip!r}")
    ctx = _Context(resolver, address, sender, helo)
    try:
        result, reason = await _check(ctx, domain)
    except _TempError as exc:
        result, reason = "temperror", str(exc)
    except _PermError as exc:
        result, reason = "permerror", str(exc)
    return SpfOutcome(result, domain, identity, reason=reason, lookups=ctx.lookups)


async def _spf_record(ctx: _Context, domain: str) -> str | None:
    answer = await ctx.resolver.txt(domain)  # the record lookup itself is not a void lookup
    if answer.tempfail:
        raise _TempError(answer.describe())
    records = [r for r in answer.records if _VERSION.match(r)] if answer.ok else []
    if len(records) > 1:
        raise _PermError(f"{domain} has {len(records)} SPF records")
    return records[0] if records else None


async def _check(ctx: _Context, domain: str) -> tuple[SpfResult, str]:
    """check_host() for one domain: (result, reason)."""
    record = await _spf_record(ctx, domain)
    if record is None:
        return "none", f"no SPF record at {domain}"
    directives, redirect = _parse(record, domain)
    for qualifier, mechanism, argument, cidr in directives:
        if await _matches(ctx, domain, mechanism, argument, cidr):
            term = f"{qualifier}{mechanism}{':' + argument if argument else ''}{cidr}"
            return QUALIFIERS[qualifier or "+"], f"{domain}: {term}"
    if redirect is not None:
        ctx.count_lookup(f"redirect={redirect}")
        target = _target(ctx, redirect, domain)
        if not _valid_domain(target) or await _spf_record(ctx, target) is None:
            raise _PermError(f"redirect to {target}, which has no SPF record")
        return await _check(ctx, target)
    return "neutral", f"{domain}: no mechanism matched"


def _parse(record: str, domain: str) -> tuple[list[tuple[str, str, str, str]], str | None]:
    directives: list[tuple[str, str, str, str]] = []
    modifiers: dict[str, str] = {}
    for term in record.split()[1:]:
        modifier = _MODIFIER.match(term)
        if modifier and ":" not in modifier.group(1) and modifier.group(1).lower() not in MECHANISMS:
            name = modifier.group(1).lower()
            if name in ("redirect", "exp") and name in modifiers:
                raise _PermError(f"{domain}: {name}= twice")
            modifiers[name] = modifier.group(2)
            continue
        directive = _DIRECTIVE.match(term)
        if directive is None or directive.group(2).lower() not in MECHANISMS:
            raise _PermError(f"{domain}: unknown term {term!r}")
        qualifier, mechanism, argument, cidr = directive.groups()
        directives.append((qualifier, mechanism.lower(), argument or "", cidr or ""))
    redirect = modifiers.get("redirect")
    # RFC 7208 6.1: redirect is ignored when the record has an "all" mechanism
    if any(m == "all" for _, m, _, _ in directives):
        redirect = None
    return directives, redirect


def _cidr_lengths(cidr: str, mechanism: str) -> tuple[int, int]:
    four, six = 32, 128
    if cidr:
        v4_text, _, v6_text = cidr[1:].partition("//") if not cidr.startswith("//") else ("", "", cidr[2:])
        if v4_text:
            four = int(v4_text)
        if v6_text:
            six = int(v6_text)
    if four > 32 or six > 128:
        raise _PermError(f"bad prefix length in {mechanism}{cidr}")
    return four, six


def _in_network(ip: IpAddress, address: str, four: int, six: int) -> bool:
    try:
        other = ipaddress.ip_address(address)
    except ValueError:
        return False
    if other.version != ip.version:
        return False
    length = four if ip.version == 4 else six
    return ip in ipaddress.ip_network(f"{other}/{length}", strict=False)


async def _matches(ctx: _Context, domain: str, mechanism: str, argument: str, cidr: str) -> bool:
    term = f"{mechanism}:{argument}" if argument else mechanism
    if mechanism == "all":
        return True
    if mechanism in ("ip4", "ip6"):
        return _ip_matches(ctx.ip, mechanism, argument, cidr)
    ctx.count_lookup(term)
    target = _target(ctx, argument, domain) if argument else domain
    if mechanism == "include":
        if not argument:
            raise _PermError(f"{domain}: include without a domain")
        result, reason = await _check(ctx, target)
        if result == "none":
            raise _PermError(f"include:{target} has no SPF record")
        if result in ("temperror", "permerror"):
            raise (_TempError if result == "temperror" else _PermError)(reason)
        return result == "pass"
    four, six = _cidr_lengths(cidr, mechanism)
    if mechanism == "a":
        return await _address_matches(ctx, target, four, six)
    if mechanism == "mx":
        return await _mx_matches(ctx, target, four, six)
    if mechanism == "ptr":
        return await _ptr_matches(ctx, target)
    if mechanism == "exists":
        if not argument:
            raise _PermError(f"{domain}: exists without a domain")
        return (await ctx.query(target, "A")).ok
    raise _PermError(f"unknown mechanism {mechanism}")  # pragma: no cover - _parse refuses these


def _ip_matches(ip: IpAddress, mechanism: str, argument: str, cidr: str) -> bool:
    try:
        network = ipaddress.ip_network(argument + cidr, strict=False)
    except ValueError:
        raise _PermError(f"bad network {mechanism}:{argument}{cidr}") from None
    if network.version != (4 if mechanism == "ip4" else 6):
        raise _PermError(f"{mechanism}:{argument}{cidr} is not an IPv{mechanism[-1]} network")
    return ip.version == network.version and ip in network


async def _addresses(ctx: _Context, name: str) -> tuple[str, ...]:
    answer = await ctx.query(name, "A" if ctx.ip.version == 4 else "AAAA")
    return answer.records if answer.ok else ()


async def _address_matches(ctx: _Context, name: str, four: int, six: int) -> bool:
    return any(_in_network(ctx.ip, a, four, six) for a in await _addresses(ctx, name))


async def _mx_matches(ctx: _Context, name: str, four: int, six: int) -> bool:
    answer = await ctx.query(name, "MX")
    hosts = [host for _, host in mx_hosts(answer) if host != "."] if answer.ok else []
    if len(hosts) > MX_NAMES_LIMIT:
        raise _PermError(f"{name} has more than {MX_NAMES_LIMIT} MX hosts")
    for host in hosts:
        if await _address_matches(ctx, host, four, six):
            return True
    return False


async def _validated_names(ctx: _Context) -> list[str]:
    """The client's PTR names whose addresses include the client (RFC 7208 5.5)."""
    answer = await ctx.query(ctx.ip.reverse_pointer, "PTR")
    names = list(answer.records[:PTR_NAMES_LIMIT]) if answer.ok else []
    validated = []
    for name in names:
        try:
            found = await ctx.resolver.query(name, "A" if ctx.ip.version == 4 else "AAAA")
        except BadName:
            continue
        if found.ok and str(ctx.ip) in found.records:
            validated.append(name)
    return validated


async def _ptr_matches(ctx: _Context, target: str) -> bool:
    target = target.lower()
    return any(n == target or n.endswith("." + target) for n in await _validated_names(ctx))


# ---- macros (RFC 7208 section 7) -------------------------------------------------------------------


def _target(ctx: _Context, spec: str, domain: str) -> str:
    """The domain-spec after macro expansion, shortened to 253 octets by dropping left labels."""
    name = expand_macros(spec, ctx.ip, ctx.sender, domain, ctx.helo).rstrip(".").lower()
    while len(name) > 253 and "." in name:
        name = name.split(".", 1)[1]
    return name


def _macro_letter(letter: str, ip: IpAddress, sender: str, domain: str, helo: str) -> str:
    local, _, sender_domain = sender.rpartition("@")
    if letter == "s":
        return sender
    if letter == "l":
        return local or "postmaster"
    if letter == "o":
        return sender_domain
    if letter == "d":
        return domain
    if letter in ("i", "c"):
        if ip.version == 4 or letter == "c":
            return str(ip)
        return ".".join(ip.exploded.replace(":", ""))
    if letter == "p":
        return "unknown"  # validated PTR names are not looked up for macros (RFC 7208 7.3 discourages %{p})
    if letter == "v":
        return "in-addr" if ip.version == 4 else "ip6"
    if letter == "h":
        return helo
    if letter in ("r", "t"):
        return "unknown" if letter == "r" else "0"
    raise _PermError(f"unknown macro letter {letter!r}")  # pragma: no cover


def expand_macros(spec: str, ip: IpAddress, sender: str, domain: str, helo: str) -> str:
    def replace(match: re.Match[str]) -> str:
        text = match.group(0)
        if text == "%%":
            return "%"
        if text == "%_":
            return " "
        if text == "%-":
            return "%20"
        if text == "%":
            raise _PermError(f"bad macro in {spec!r}")
        letter, digits, reverse, delimiters = match.groups()
        value = _macro_letter(letter.lower(), ip, sender, domain, helo)
        parts = re.split("[" + re.escape(delimiters or ".") + "]", value)
        if reverse:
            parts.reverse()
        if digits:
            count = int(digits)
            if count == 0:
                raise _PermError(f"zero label count in {spec!r}")
            parts = parts[-count:]
        return ".".join(parts)

    return _MACRO.sub(replace, spec)
