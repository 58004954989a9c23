"""SCAFFOLD (being written in this session): authenticated users send only as their own addresses."""
from __future__ import annotations

from dataclasses import dataclass

from ingress.checks import Check, register_check


@dataclass(frozen=True, slots=True)
class _Settings:
    pass


@register_check
class SenderLoginCheck(Check):
    name = "sender_login"
    description = "authenticated users send only as their own addresses"
    Settings = _Settings
