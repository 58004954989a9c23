"""Settings of outbound mail: DKIM signing (`[dkim]`) and direct MX delivery (`[sinks.mx]`).

Kept apart from `pipeline.settings` (which embeds them) so that module stays readable.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.settings_base import ConfigError

__all__ = ["DkimKey", "DkimSettings", "MxSinkSettings", "MX_TLS_MODES"]

# none: plain SMTP; opportunistic: STARTTLS when offered, any certificate (RFC 7435);
# verify: STARTTLS required and the certificate must name the MX host (else the delivery is deferred)
MX_TLS_MODES = ("none", "opportunistic", "verify")


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
    """DKIM signing in the outbound sinks (smarthost, mx): relaxed/relaxed, after every edit."""

    keys: list[DkimKey] = field(default_factory=list)
    # header fields to sign; empty: dkimpy's recommended set (From, To, Subject, Date, Message-ID, ...)
    headers: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        domains = [k.domain.lower() for k in self.keys]
        if len(set(domains)) != len(domains):
            raise ConfigError("dkim.keys: a domain has two keys (one key per domain; rotate by replacing it)")


@dataclass(frozen=True, slots=True)
class MxSinkSettings:
    """Direct delivery to each recipient domain's MX hosts (the `mx` destination)."""

    port: int = 25  # the port of every MX host; only a test stack sets another
    tls: str = "opportunistic"  # see MX_TLS_MODES
    ca_file: str = ""  # extra CA bundle (PEM) for tls = "verify"; empty: the system's
    helo_name: str = "mx.school.test"
    ipv6: bool = True  # also try AAAA addresses (after the A addresses of the same host)
    max_addresses: int = 5  # addresses tried per domain and attempt, over all MX hosts (Postfix: smtp_mx_address_limit)
    connections_per_domain: int = 10  # concurrent connections to one recipient domain
    inflight: int = 16
    timeout: float = 60.0

    def __post_init__(self) -> None:
        if self.tls not in MX_TLS_MODES:
            raise ConfigError(f"sinks.mx.tls: expected one of {', '.join(MX_TLS_MODES)}, got {self.tls!r}")
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"sinks.mx.port: expected 1..65535, got {self.port}")
        if self.max_addresses < 1 or self.connections_per_domain < 1:
            raise ConfigError("sinks.mx.max_addresses and connections_per_domain: expected at least 1")
