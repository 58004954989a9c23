"""SCAFFOLD (being written in this session): the MAIL FROM domain must resolve (MX, A or AAAA)."""
from __future__ import annotations

from dataclasses import dataclass

from ingress.checks import Check, register_check


@dataclass(frozen=True, slots=True)
class _Settings:
    pass


@register_check
class SenderDomainCheck(Check):
    name = "sender_domain"
    description = "the MAIL FROM domain must resolve (MX, A or AAAA)"
    Settings = _Settings
