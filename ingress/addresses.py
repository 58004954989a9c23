"""Envelope address parsing for routing decisions.

Only the plain `local@domain` form may reach a local mailbox. Forms that other MTAs interpret as
routing (`%` hack, UUCP bang paths, source routes, quoted local parts holding an `@`, address
literals) are never taken as local: they are refused or treated as relay attempts.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Address", "parse_address", "AddressError"]


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
