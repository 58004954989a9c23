"""SCAFFOLD (being written in this session): local recipients must exist (and be enabled) in LDAP."""
from __future__ import annotations

from dataclasses import dataclass

from ingress.checks import Check, register_check


@dataclass(frozen=True, slots=True)
class _Settings:
    pass


@register_check
class RecipientCheck(Check):
    name = "recipient"
    description = "local recipients must exist (and be enabled) in LDAP"
    Settings = _Settings
