"""Envelope address parsing for routing decisions.

Only the plain `local@domain` form may reach a local mailbox. Forms that other MTAs interpret as
routing (`%` hack, UUCP bang paths, source routes, quoted local parts holding an `@`, address
literals) are never taken as local: they are refused or treated as relay attempts.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Address", "parse_address", "resolve_route", "AddressError"]


class AddressError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Address:
    local: str
    domain: str  # lower-case; "[127.0.0.1]" for an address literal

    @property
    def is_literal(self) -> bool:
        return self.domain.startswith("[")

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"


_ROUTING_CHARS = set('%!@"\\:')


def parse_address(text: str) -> Address:
    """Split a mailbox into local part and domain, refusing routing tricks in the local part."""
    if not text or text.startswith("@") or any(c in text for c in " \t\r\n\x00<>"):
        raise AddressError("not a plain mailbox")
    local, sep, domain = text.rpartition("@")
    if not sep or not local or not domain:
        raise AddressError("missing local part or domain")
    if any(c in _ROUTING_CHARS for c in local):
        raise AddressError("routing characters in local part")
    if domain.startswith("["):
        if not domain.endswith("]"):
            raise AddressError("bad address literal")
        return Address(local, domain)
    labels = domain.rstrip(".").split(".")
    if not all(labels) or any(len(label) > 63 for label in labels) or len(domain) > 253:
        raise AddressError("bad domain")
    return Address(local, domain.rstrip(".").lower())


MAX_ROUTE_HOPS = 8  # a recipient is resolved through at most this many routing layers


def resolve_route(text: str, local_domains: frozenset[str]) -> Address:
    """The final destination of a routing form, resolved as Postfix resolves it for its own domains.

    Used only for authenticated and trusted clients, whose mail may go anywhere: a quoted local part
    (`"r@ext.test"`, `"r@ext.test"@school.test`), a local part holding an `@`
    (`r@ext.test@school.test`), the percent hack (`r%ext.test@school.test`) and a bang path
    (`ext.test!r@school.test`) all resolve to `r@ext.test`. The inner route is followed only when
    the outer domain is local (the client asks *us* to route further) or absent. A source route
    (`@school.test:r@ext.test`) never gets here: the SMTP parser drops it (RFC 5321 section 4.1.1.3).
    """
    for _ in range(MAX_ROUTE_HOPS):
        try:
            return parse_address(text)
        except AddressError:
            text = _strip_one_route(text, local_domains)
    raise AddressError("too many routing layers")


def _strip_one_route(text: str, local_domains: frozenset[str]) -> str:
    if text.startswith('"') and text.endswith('"') and len(text) > 1:
        return _unquote(text[1:-1])  # a quoted address with no domain of its own
    local, sep, domain = text.rpartition("@")
    if not sep or domain.rstrip(".").lower() not in local_domains:
        raise AddressError("routing form through a domain that is not ours")
    if local.startswith('"') and local.endswith('"') and len(local) > 1:
        local = _unquote(local[1:-1])
    if "@" in local:
        return local
    if "%" in local:
        user, _, host = local.rpartition("%")
        return f"{user}@{host}"
    if "!" in local:
        host, _, user = local.partition("!")
        return f"{user}@{host}"
    raise AddressError("routing characters in local part")


def _unquote(quoted: str) -> str:
    return re.sub(r"\\(.)", r"\1", quoted)
