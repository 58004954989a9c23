"""Relay control: non-local recipients only for authenticated sessions and trusted networks.

A recipient whose domain is one of `ingress.local_domains` is local and passes here (the
`recipient` check looks it up). Anything else is a relay attempt: allowed for an authenticated
submission session or a client in `ingress.relay_networks`, refused `554 5.7.1` otherwise. The
address forms other MTAs read as routing (`%` hack, `!` paths, quoted local parts holding an `@`,
address literals) never count as local (see `ingress.addresses`): refused here. For an authenticated
or trusted client the handler first resolves a route through a local domain to its final address
(`ingress.addresses.resolve_route`), so what reaches this check is that plain address.

`relay_domains` (Postfix's relay_domains): domains this gateway accepts mail for from anyone and
passes on to another server, such as a department's sub-domain with its own mail server (the route
stage's site table names where each goes). ``physik.school.test`` is that domain, ``.physik.school.test``
every name under it. Their recipients are not looked up in the directory (the `recipient` check
asks only about local domains); the next hop refuses unknown ones.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ingress.addresses import AddressError, parse_address
from ingress.checks import PASS, Check, CheckContext, Decision, refuse, register_check

__all__ = ["RelayCheck"]

RELAY_DENIED = "554 5.7.1 Relaying denied: recipient domain is not local"
BAD_SYNTAX = "501 5.1.3 Bad recipient address syntax"
ROUTING_REFUSED = "554 5.7.1 Relaying denied: source routes, %-hacks and address literals are not accepted"


@dataclass(frozen=True, slots=True)
class RelaySettings:
    # allow authenticated sessions and relay networks to send to address literals (r@[192.0.2.1])
    allow_address_literals: bool = False
    # domains relayed for anyone ("x.test": that domain, ".x.test": every name under it)
    relay_domains: list[str] = field(default_factory=list)


@register_check
class RelayCheck(Check):
    name = "relay"
    description = "non-local recipients only for authenticated sessions and relay networks"
    Settings = RelaySettings

    async def rcpt(self, ctx: CheckContext, recipient: str) -> Decision:
        try:
            address = parse_address(recipient)
        except AddressError as exc:
            if recipient.startswith("@") or any(c in recipient.rpartition("@")[0] for c in '%!@"\\:'):
                return refuse(ROUTING_REFUSED, "relay_routing_form", f"{recipient!r}: {exc}")
            return refuse(BAD_SYNTAX, "bad_recipient_syntax", f"{recipient!r}: {exc}")
        if not address.is_literal and address.domain in self.services.local_domains:
            return PASS
        if not address.is_literal and self._relayed(address.domain):
            ctx.notes["relay"] = "relay_domain"
            return PASS
        if not (ctx.authenticated or ctx.trusted):
            return refuse(RELAY_DENIED, "relay_denied", f"{recipient} from an unauthenticated, untrusted client")
        if address.is_literal and not self.settings.allow_address_literals:
            return refuse(ROUTING_REFUSED, "relay_address_literal", recipient)
        ctx.notes["relay"] = "authenticated" if ctx.authenticated else "trusted_network"
        return PASS

    def _relayed(self, domain: str) -> bool:
        for entry in self.settings.relay_domains:
            entry = entry.strip().lower()
            if domain == entry or (entry.startswith(".") and domain.endswith(entry)):
                return True
        return False
