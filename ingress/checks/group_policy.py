"""SCAFFOLD (being written in this session): who may write to which group and its members (rules as data)."""
from __future__ import annotations

from dataclasses import dataclass

from ingress.checks import Check, register_check


@dataclass(frozen=True, slots=True)
class _Settings:
    pass


@register_check
class GroupPolicyCheck(Check):
    name = "group_policy"
    description = "who may write to which group and its members (rules as data)"
    Settings = _Settings
