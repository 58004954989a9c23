"""SCAFFOLD (being written in this session): right-hand-side blocklists of the MAIL FROM domain."""
from __future__ import annotations

from dataclasses import dataclass

from ingress.checks import Check, register_check


@dataclass(frozen=True, slots=True)
class _Settings:
    pass


@register_check
class RhsblCheck(Check):
    name = "rhsbl"
    description = "right-hand-side blocklists of the MAIL FROM domain"
    Settings = _Settings
