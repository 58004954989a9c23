"""SCAFFOLD (being written in this session): forward-confirmed reverse DNS of the client."""
from __future__ import annotations

from dataclasses import dataclass

from ingress.checks import Check, register_check


@dataclass(frozen=True, slots=True)
class _Settings:
    pass


@register_check
class FcrdnsCheck(Check):
    name = "fcrdns"
    description = "forward-confirmed reverse DNS of the client"
    Settings = _Settings
