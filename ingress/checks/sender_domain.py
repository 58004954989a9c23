"""The MAIL FROM domain must exist and accept mail (Postfix's reject_unknown_sender_domain).

A sender domain is usable when it has MX records, or, without MX, an A or AAAA record (the
"implicit MX" of RFC 5321 5.1). Bounces to any other domain could not be delivered, so mail from
it is refused before it is accepted:

    the name does not exist (NXDOMAIN), or has
    neither MX nor A nor AAAA                      550 5.1.8  reason sender_domain_unknown
    a null MX (RFC 7505: its only MX is ".")       550 5.7.27 reason sender_domain_null_mx
    a lookup failed temporarily (timeout,
    SERVFAIL, REFUSED)                              450 4.1.8  reason sender_domain_tempfail
    the address has no usable domain part           501 5.1.7  reason sender_malformed

The null sender <> always passes (bounces must get through). `on_error = "skip"` lets a sender
through when its domain cannot be looked up, with the note `sender_domain = "skipped_tempfail"`.

Address literals (`user@[192.0.2.1]`) have no domain to check and no MTA on the open internet
sends from one, so they are refused by default (`550 5.7.1`, reason `sender_domain_literal`);
`allow_address_literals = true` lets them pass with the note `sender_domain = "address_literal"`.

Not checked: allowlisted clients, authenticated sessions (the `sender_login` check decides what
they may send as), other listeners than `mx` (noted as `allowlisted`, `authenticated`, `not_mx`).

Settings (`[checks.sender_domain]`):
    on_error                "tempfail" (default) or "skip"
    allow_address_literals  false (default)
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ingress.checks import PASS, Check, CheckContext, Decision, refuse, register_check
from pipeline.clients.dns import BadName, is_null_mx
from pipeline.clients.dnslists import ON_ERROR, SenderSyntaxError, sender_domain
from pipeline.settings import ConfigError

__all__ = ["SenderDomainCheck", "SenderDomainSettings"]

MALFORMED = "501 5.1.7 Bad sender address syntax"
UNKNOWN = "550 5.1.8 Sender address rejected: Domain not found"
NULL_MX = "550 5.7.27 Sender address rejected: Domain does not accept mail"
TEMPFAIL = "450 4.1.8 Sender address rejected: Domain lookup failed; try again later"
LITERAL = "550 5.7.1 Sender address rejected: Address literals are not accepted"


@dataclass(frozen=True, slots=True)
class SenderDomainSettings:
    on_error: str = "tempfail"  # or "skip"
    allow_address_literals: bool = False

    def __post_init__(self) -> None:
        if self.on_error not in ON_ERROR:
            raise ConfigError(f"checks.sender_domain.on_error: expected tempfail or skip, got {self.on_error!r}")


@dataclass(frozen=True, slots=True)
class DomainStatus:
    status: str  # "ok", "unknown", "null_mx" or "tempfail"
    detail: str


@register_check
class SenderDomainCheck(Check):
    name = "sender_domain"
    description = "the MAIL FROM domain must resolve (MX, A or AAAA)"
    Settings = SenderDomainSettings

    async def mail(self, ctx: CheckContext, sender: str) -> Decision:
        if sender == "":
            return PASS
        if ctx.skip_for_standing("sender_domain"):
            return PASS
        try:
            domain = sender_domain(sender)
        except SenderSyntaxError as exc:
            return refuse(MALFORMED, "sender_malformed", f"{sender!r}: {exc}")
        if domain.startswith("["):
            if not self.settings.allow_address_literals:
                return refuse(LITERAL, "sender_domain_literal", sender)
            ctx.notes["sender_domain"] = "address_literal"
            return PASS
        try:
            found = await self.lookup(domain)
        except BadName as exc:
            return refuse(MALFORMED, "sender_malformed", str(exc))
        return self._decide(ctx, found)

    async def lookup(self, domain: str) -> DomainStatus:
        """MX; without MX records the A and AAAA records (implicit MX)."""
        resolver = self.services.resolver
        mx = await resolver.mx(domain)
        if mx.ok:
            return DomainStatus("null_mx" if is_null_mx(mx) else "ok", mx.describe())
        if mx.status == "nxdomain":
            return DomainStatus("unknown", mx.describe())
        if mx.tempfail:
            return DomainStatus("tempfail", mx.describe())
        a, aaaa = await asyncio.gather(resolver.a(domain), resolver.aaaa(domain))
        detail = f"{mx.describe()}; {a.describe()}; {aaaa.describe()}"
        if a.ok or aaaa.ok:
            return DomainStatus("ok", detail)
        return DomainStatus("tempfail" if a.tempfail or aaaa.tempfail else "unknown", detail)

    def _decide(self, ctx: CheckContext, found: DomainStatus) -> Decision:
        if found.status == "ok":
            return PASS
        if found.status == "null_mx":
            return refuse(NULL_MX, "sender_domain_null_mx", found.detail)
        if found.status == "unknown":
            return refuse(UNKNOWN, "sender_domain_unknown", found.detail)
        if self.settings.on_error == "skip":
            ctx.notes["sender_domain"] = "skipped_tempfail"
            return PASS
        return refuse(TEMPFAIL, "sender_domain_tempfail", found.detail)
