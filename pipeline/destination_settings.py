"""Destinations as data: `[destinations.<name>]`, the next hops the route stage chooses from.

Each destination is a name, a kind (how its sink speaks to the next hop) and where that hop is.
Every destination gets its own `routed.<name>` topic and its own sink process (`sink:<name>`), with
the retry and DSN handling every delivery sink has (`consumers.sinks.delivery.DeliverySink`). Adding
a destination is a config section, no code:

    [destinations.store2]          # a second mailbox server
    kind = "lmtp"
    host = "10.0.0.12"
    port = 24
    mail_hosts = ["store2.school.test"]   # the directory's mailHost values it serves

Direct delivery to the recipient domains' MX hosts is the kind ``mx`` (no host; `port`, `tls` and
its own keys `ipv6`, `max_addresses`, `connections_per_domain` say how):

    [destinations.mx]
    kind = "mx"

The two destinations of every site exist without a section: ``lmtp`` (the local mailbox server,
from `[sinks.lmtp]`) and ``smarthost`` (the next hop for everything else, from `[sinks.smarthost]`).
A `[destinations.lmtp]` or `[destinations.smarthost]` section replaces that default entirely.

The kinds a destination may have are `DESTINATION_KINDS`; the transport each kind delivers through
is the table in `consumers.sinks.destination` (a new kind is one entry there and one here).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pipeline.settings_base import ConfigError

__all__ = ["DestinationSettings", "DESTINATION_KINDS", "SIGNING_KINDS", "DEFAULT_DESTINATIONS", "MX_TLS_MODES",
           "check_destination_name", "default_destination"]

# lmtp: LMTP (RFC 2033) to a mailbox server; smtp: SMTP to one fixed next hop (smarthost, Exchange, list host);
# mx: SMTP straight to each recipient domain's MX hosts (consumers/sinks/mx.py)
DESTINATION_KINDS = ("lmtp", "smtp", "mx")
# the kinds whose mail leaves the site: DKIM-signed as it goes ([dkim])
SIGNING_KINDS = ("smtp", "mx")
DEFAULT_DESTINATIONS = ("lmtp", "smarthost")
_TLS_MODES = ("", "none", "opportunistic", "required", "implicit")
# kind mx: none: plain SMTP; opportunistic: STARTTLS when offered, any certificate (RFC 7435);
# verify: STARTTLS required and the certificate must name the MX host (else the delivery is deferred)
MX_TLS_MODES = ("", "none", "opportunistic", "verify")
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
RESERVED_NAMES = ("analytics",)  # sink names that are not destinations


def check_destination_name(name: str) -> None:
    """A destination name becomes a topic (`routed.<name>`), a consumer group and a component name."""
    if not _NAME.fullmatch(name) or name in RESERVED_NAMES:
        raise ConfigError(f"destinations.{name}: expected a name of lower-case letters, digits, _ and - "
                          f"(at most 40, not {', '.join(RESERVED_NAMES)})")


@dataclass(frozen=True, slots=True)
class DestinationSettings:
    """One next hop. The SMTP keys (tls, verify, ca_file, username, password_file) mean what they
    mean in `[sinks.smarthost]`; an `lmtp` destination speaks plain LMTP unless `tls` says otherwise.
    An `mx` destination has no host: it finds each recipient domain's MX hosts; `port` is theirs (25;
    only a test stack sets another), `tls` one of MX_TLS_MODES, and the last keys below are its own."""

    kind: str = "smtp"  # one of DESTINATION_KINDS
    host: str = "127.0.0.1"
    port: int = 25
    tls: str = ""  # none | opportunistic | required | implicit (mx: none | opportunistic | verify);
    # "": none for lmtp, opportunistic for smtp and mx
    verify: bool = True
    ca_file: str = ""
    username: str = ""
    password_file: str = ""
    helo_name: str = "mx.school.test"  # EHLO/LHLO name
    inflight: int = 16  # routed events delivered concurrently
    timeout: float = 60.0
    # seconds an unused connection is kept for the next delivery (0: QUIT after each; kinds lmtp and
    # smtp; Postfix: lmtp_/smtp_connection_cache_time_limit)
    reuse_seconds: float = 2.0
    # the directory's mailHost values this destination serves (inetLocalMailRecipient routing)
    mail_hosts: list[str] = field(default_factory=list)
    description: str = ""  # shown by `poststelle status` and in the component list
    # kind mx only: also try AAAA addresses (after the A addresses of the same host)
    ipv6: bool = True
    max_addresses: int = 5  # kind mx: addresses tried per domain and attempt (Postfix: smtp_mx_address_limit)
    connections_per_domain: int = 10  # kind mx: concurrent connections to one recipient domain

    def check(self, name: str) -> None:
        """Refuse what cannot work, naming the key (`destinations.<name>.<key>`)."""
        key = f"destinations.{name}"
        if self.kind not in DESTINATION_KINDS:
            raise ConfigError(f"{key}.kind: expected one of {', '.join(DESTINATION_KINDS)}, got {self.kind!r}")
        modes = MX_TLS_MODES if self.kind == "mx" else _TLS_MODES
        if self.tls not in modes:
            raise ConfigError(f"{key}.tls: expected one of {', '.join(modes[1:])}, got {self.tls!r}")
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"{key}.port: expected 1..65535, got {self.port}")
        if self.inflight < 1 or self.timeout <= 0 or self.reuse_seconds < 0:
            raise ConfigError(f"{key}: inflight must be at least 1, timeout above 0 and reuse_seconds at least 0")
        if self.username and not self.password_file:
            raise ConfigError(f"{key}.password_file: required when {key}.username is set")
        if self.max_addresses < 1 or self.connections_per_domain < 1:
            raise ConfigError(f"{key}.max_addresses and {key}.connections_per_domain: expected at least 1")


def default_destination(settings: Any, name: str) -> DestinationSettings:
    """lmtp and smarthost without a [destinations.<name>] section: their [sinks.<name>] settings."""
    if name == "lmtp":
        lmtp = settings.sinks.lmtp
        return DestinationSettings(kind="lmtp", host=lmtp.host, port=lmtp.port, tls="none", helo_name=lmtp.lhlo_name,
                                   inflight=lmtp.inflight, timeout=lmtp.timeout,
                                   reuse_seconds=lmtp.reuse_seconds, description="the local mailbox server")
    smart = settings.sinks.smarthost
    return DestinationSettings(kind="smtp", host=smart.host, port=smart.port, tls=smart.tls, verify=smart.verify,
                               ca_file=smart.ca_file, username=smart.username, password_file=smart.password_file,
                               helo_name=smart.helo_name, inflight=smart.inflight, timeout=smart.timeout,
                               reuse_seconds=smart.reuse_seconds,
                               description="the smarthost: the next hop for everything else")
