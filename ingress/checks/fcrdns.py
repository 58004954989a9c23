"""Forward-confirmed reverse DNS (FCrDNS) of the client, at connect.

The client address's PTR names are looked up, then the A (IPv4 client) or AAAA (IPv6 client)
records of each name, at most `max_names` of them, concurrently. The client is confirmed when one
name leads back to its address: `ctx.reverse_name` is set to that name (Received: headers and
later checks use it) and the note is `fcrdns = "pass"`.

Not confirmed (no PTR, or no PTR name resolves back to the address):
    action = "reject"  550 5.7.25 Reverse DNS validation failed (RFC 7372), reason `fcrdns_failed`
    action = "note"    the session goes on with the note `fcrdns = "fail"`

The default is "reject": large receivers refuse such clients with the same 550 5.7.25, so
legitimate MTAs have matching PTR and A records; a site that hears from many small or legacy
servers (or uses FCrDNS only as a signal for later stages) sets "note".

A lookup that fails temporarily (timeout, SERVFAIL, REFUSED, e.g. a lame reverse delegation)
before confirmation answers `450 4.7.25` (reason `fcrdns_tempfail`); `on_error = "skip"` lets the
client through with the note `fcrdns = "skipped_tempfail"`. A name that was confirmed wins over
failures of the other names.

Not checked: allowlisted clients, authenticated sessions, other listeners than `mx` (noted as
`allowlisted`, `authenticated`, `not_mx`).

Settings (`[checks.fcrdns]`):
    action     "reject" (default) or "note"
    on_error   "tempfail" (default) or "skip"
    max_names  PTR names followed at most (default 10)
"""
from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ingress.checks import PASS, Check, CheckContext, Decision, refuse, register_check
from pipeline.clients.dns import Answer, BadName, normalize_ip
from pipeline.clients.dnslists import ON_ERROR
from pipeline.settings import ConfigError

__all__ = ["FcrdnsCheck", "FcrdnsSettings"]

FAILED = "550 5.7.25 Reverse DNS validation failed"
TEMPFAIL = "450 4.7.25 Reverse DNS validation failed temporarily; try again later"
ACTIONS = ("reject", "note")


@dataclass(frozen=True, slots=True)
class FcrdnsSettings:
    action: str = "reject"  # or "note"
    on_error: str = "tempfail"  # or "skip"
    max_names: int = 10

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ConfigError(f"checks.fcrdns.action: expected reject or note, got {self.action!r}")
        if self.on_error not in ON_ERROR:
            raise ConfigError(f"checks.fcrdns.on_error: expected tempfail or skip, got {self.on_error!r}")
        if self.max_names < 1:
            raise ConfigError(f"checks.fcrdns.max_names: expected at least 1, got {self.max_names}")


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the lookups found: the confirmed name, or why not."""

    status: str  # "pass", "fail" or "tempfail"
    name: str = ""
    detail: str = ""


@register_check
class FcrdnsCheck(Check):
    name = "fcrdns"
    description = "forward-confirmed reverse DNS of the client"
    Settings = FcrdnsSettings

    async def connect(self, ctx: CheckContext) -> Decision:
        if ctx.skip_for_standing("fcrdns"):
            return PASS
        verdict = await self.verify(ctx.client_ip)
        if verdict.status == "pass":
            ctx.reverse_name = verdict.name
            ctx.notes["fcrdns"] = "pass"
            return PASS
        if verdict.status == "tempfail":
            if self.settings.on_error == "skip":
                ctx.notes["fcrdns"] = "skipped_tempfail"
                return PASS
            return refuse(TEMPFAIL, "fcrdns_tempfail", verdict.detail)
        if self.settings.action == "note":
            ctx.notes["fcrdns"] = "fail"
            return PASS
        return refuse(FAILED, "fcrdns_failed", verdict.detail)

    async def verify(self, client_ip: str) -> Verdict:
        """PTR names of the address, then their addresses: does one lead back?"""
        try:
            address = normalize_ip(client_ip)
        except ValueError:
            return Verdict("fail", detail=f"client address {client_ip!r} is not an IP address")
        resolver = self.services.resolver
        ptr = await resolver.ptr(str(address))
        if ptr.tempfail:
            return Verdict("tempfail", detail=ptr.describe())
        if not ptr.ok:
            return Verdict("fail", detail=f"no PTR: {ptr.describe()}")
        names = list(dict.fromkeys(ptr.records))[: self.settings.max_names]
        lookup = resolver.a if address.version == 4 else resolver.aaaa
        forwards = await asyncio.gather(*(_forward(lookup, name) for name in names))
        for name, answer in zip(names, forwards):
            if answer is not None and answer.ok and _leads_back(answer, address):
                return Verdict("pass", name=name)
        details = "; ".join(answer.describe() if answer else f"{name}: not a DNS name"
                            for name, answer in zip(names, forwards))
        if any(answer is not None and answer.tempfail for answer in forwards):
            return Verdict("tempfail", detail=f"PTR {','.join(names)}; {details}")
        return Verdict("fail", detail=f"PTR {','.join(names)}; none leads back to {address}: {details}")


async def _forward(lookup: Callable[[str], Awaitable[Answer]], name: str) -> Answer | None:
    try:
        return await lookup(name)
    except BadName:
        return None


def _leads_back(answer: Answer, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    for record in answer.records:
        try:
            if ipaddress.ip_address(record) == address:
                return True
        except ValueError:
            continue
    return False
