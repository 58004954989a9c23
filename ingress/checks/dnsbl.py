"""SCAFFOLD (being written in this session): DNS blocklists of the client IP, weighted like postscreen's dnsbl_sites."""
from __future__ import annotations

from dataclasses import dataclass

from ingress.checks import Check, register_check


@dataclass(frozen=True, slots=True)
class _Settings:
    pass


@register_check
class DnsblCheck(Check):
    name = "dnsbl"
    description = "DNS blocklists of the client IP, weighted like postscreen's dnsbl_sites"
    Settings = _Settings
