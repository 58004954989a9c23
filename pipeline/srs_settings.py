"""`[srs]`: the Sender Rewriting Scheme for forwarded mail (`pipeline.mail.srs`).

Kept apart from `pipeline.settings` (which imports it into `Settings`); the route stage signs the
envelope sender of forwarded copies with it, the ingress's `srs` check verifies bounce addresses at
RCPT, and the route stage reverses them.
"""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.settings_base import ConfigError

__all__ = ["SrsSettings"]


@dataclass(frozen=True, slots=True)
class SrsSettings:
    enabled: bool = False
    # the keys, one a line: the first signs, every one verifies (rotation); required when enabled
    key_file: str = ""
    domain: str = ""  # the domain of the rewritten senders; "": the first of ingress.local_domains
    max_age_days: int = 21  # a bounce to an older SRS address is refused

    def __post_init__(self) -> None:
        if not 1 <= self.max_age_days <= 1000:
            raise ConfigError(f"srs.max_age_days: expected 1..1000, got {self.max_age_days}")
        if self.enabled and not self.key_file:
            raise ConfigError("srs.key_file: required when srs.enabled is true")
