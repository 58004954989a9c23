"""The quarantine product's sections of the configuration: `[quarantine]`, `[web]`, `[digest]`.

Kept apart from `pipeline.settings` (which imports them into `Settings`) so that file stays about
the pipeline itself.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from pipeline.settings_base import ConfigError, parse_duration

__all__ = ["QuarantineSettings", "WebSettings", "DigestSettings", "CATEGORIES", "WEEKDAYS"]

# what an entry is held for (pipeline.state.quarantine.Entry.category)
CATEGORIES = ("spam", "attachment", "virus", "dmarc", "rejected", "other")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True, slots=True)
class QuarantineSettings:
    """How long held mail is kept, who may release what, and the key digest links are signed with."""

    lifetime: str = "30d"  # an entry (and its blob, once nothing else needs it) is removed after this
    # categories a user may only *request* to be released; an admin approves (virus: a scan limit hit)
    approval: list[str] = field(default_factory=lambda: ["attachment", "virus", "dmarc", "rejected"])
    link_key_file: str = ""  # HMAC key of the digest links; "": <home>/keys/quarantine-links.key, made on first use
    cleanup_every: str = "1h"  # how often the digest service removes expired entries and aged-out blobs

    def __post_init__(self) -> None:
        parse_duration("quarantine.lifetime", self.lifetime)
        parse_duration("quarantine.cleanup_every", self.cleanup_every)
        for name in self.approval:
            if name not in CATEGORIES:
                raise ConfigError(f"quarantine.approval: unknown category {name!r} (known: {', '.join(CATEGORIES)})")

    @property
    def lifetime_seconds(self) -> float:
        return parse_duration("quarantine.lifetime", self.lifetime)

    @property
    def cleanup_seconds(self) -> float:
        return parse_duration("quarantine.cleanup_every", self.cleanup_every)


@dataclass(frozen=True, slots=True)
class WebSettings:
    """The quarantine portal (`poststelle web`): loopback only; a site's TLS proxy puts it online."""

    host: str = "127.0.0.1"
    port: int = 8025
    base_url: str = ""  # what digest links start with; "": http://<host>:<port>
    admin_group: str = ""  # DN of the directory group whose members are the portal's admins ("": none)
    secure_cookies: bool = True  # Secure flag on the session cookie (behind the TLS proxy); false: plain HTTP
    session_lifetime: str = "8h"
    login_attempts: int = 5  # wrong passwords per login (and per client address) within login_window
    login_window: str = "15m"

    def __post_init__(self) -> None:
        try:
            loopback = ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            loopback = self.host == "localhost"
        if not loopback:
            raise ConfigError(f"web.host: the portal listens on loopback only (a TLS proxy exposes it), got {self.host!r}")
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"web.port: expected 1..65535, got {self.port}")
        if self.base_url and not re.fullmatch(r"https?://[^\s/]+(/[^\s]*)?", self.base_url):
            raise ConfigError(f"web.base_url: expected an http(s) URL, got {self.base_url!r}")
        parse_duration("web.session_lifetime", self.session_lifetime)
        parse_duration("web.login_window", self.login_window)
        if self.login_attempts < 1:
            raise ConfigError(f"web.login_attempts: expected at least 1, got {self.login_attempts}")

    @property
    def url(self) -> str:
        """The portal's external URL, without a trailing slash."""
        return (self.base_url or f"http://{self.host}:{self.port}").rstrip("/")


@dataclass(frozen=True, slots=True)
class DigestSettings:
    """When the digest service mails each user the entries new in their quarantine."""

    time: str = "07:00"  # local time of day (HH:MM)
    weekday: str = "mon"  # the day of the weekly digest
    sender: str = ""  # "": postmaster@<first local domain>
    from_name: str = "poststelle"

    def __post_init__(self) -> None:
        match = re.fullmatch(r"(\d{1,2}):(\d{2})", self.time)
        if not match or int(match.group(1)) > 23 or int(match.group(2)) > 59:
            raise ConfigError(f"digest.time: expected HH:MM, got {self.time!r}")
        if self.weekday not in WEEKDAYS:
            raise ConfigError(f"digest.weekday: expected one of {', '.join(WEEKDAYS)}, got {self.weekday!r}")
