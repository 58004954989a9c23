"""SCAFFOLD (being written in this session): greylisting by (client, sender, recipient) with auto-whitelisting."""
from __future__ import annotations

from dataclasses import dataclass

from ingress.checks import Check, register_check


@dataclass(frozen=True, slots=True)
class _Settings:
    pass


@register_check
class GreylistCheck(Check):
    name = "greylist"
    description = "greylisting by (client, sender, recipient) with auto-whitelisting"
    Settings = _Settings
