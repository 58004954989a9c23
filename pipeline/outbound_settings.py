"""Settings of outbound mail: DKIM signing (`[dkim]`). (Direct MX delivery is a destination of kind
``mx``: its keys are in `pipeline.destination_settings`.)

Kept apart from `pipeline.settings` (which embeds them) so that module stays readable.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.settings_base import ConfigError

__all__ = ["DkimKey", "DkimSettings"]


@dataclass(frozen=True, slots=True)
class DkimKey:
    """One signing key: mail whose header From is in `domain` is signed with d=domain, s=selector."""

    domain: str = ""
    selector: str = ""
    key_file: str = ""  # the private key (PEM, PKCS#1 or PKCS#8; ed25519: the base64 seed); relative: to the project
    algorithm: str = "rsa-sha256"  # or ed25519-sha256 (RFC 8463)

    def __post_init__(self) -> None:
        for key in ("domain", "selector", "key_file"):
            if not getattr(self, key):
                raise ConfigError(f"dkim.keys: every key needs {key}")
        if self.algorithm not in ("rsa-sha256", "ed25519-sha256"):
            raise ConfigError(f"dkim.keys ({self.domain}): algorithm: expected rsa-sha256 or ed25519-sha256, "
                              f"got {self.algorithm!r}")


@dataclass(frozen=True, slots=True)
class DkimSettings:
    """DKIM signing in the sinks of the smtp and mx destinations: relaxed/relaxed, after every edit."""

    keys: list[DkimKey] = field(default_factory=list)
    # header fields to sign; empty: dkimpy's recommended set (From, To, Subject, Date, Message-ID, ...)
    headers: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        domains = [k.domain.lower() for k in self.keys]
        if len(set(domains)) != len(domains):
            raise ConfigError("dkim.keys: a domain has two keys (one key per domain; rotate by replacing it)")
