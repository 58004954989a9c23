"""The `[users]` section: the site's defaults, limits and directory attributes of per-user settings.

A user's value comes from what they set themselves (the `poststelle.users` topic, `pipeline.state.users`),
else from the directory (`[users.ldap]`), else from here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from pipeline.settings_base import ConfigError

__all__ = ["USER_SETTINGS", "THRESHOLDS", "DIGESTS", "LANGUAGES", "UserLimits", "UserLdapAttributes",
           "UsersSettings"]

# per-user settings ([users], pipeline.state.users): their names, the thresholds among them, the choices
USER_SETTINGS = ("quarantine", "tag_probable", "tag_certain", "quarantine_at", "reject_at", "allow_senders",
                 "block_senders", "digest", "language")
THRESHOLDS = ("tag_probable", "tag_certain", "quarantine_at", "reject_at")
DIGESTS = ("daily", "weekly", "off")
LANGUAGES = ("de", "en")


@dataclass(frozen=True, slots=True)
class UserLimits:
    """The range [min, max] (spam probability in %) a user's own threshold is kept in."""

    tag_probable: list[float] = field(default_factory=lambda: [0.0, 100.0])
    tag_certain: list[float] = field(default_factory=lambda: [0.0, 100.0])
    quarantine_at: list[float] = field(default_factory=lambda: [20.0, 100.0])  # holding ham is a support call
    reject_at: list[float] = field(default_factory=lambda: [70.0, 100.0])  # a rejection bounces to the sender

    def __post_init__(self) -> None:
        for key in THRESHOLDS:
            pair = getattr(self, key)
            if len(pair) != 2 or not 0 <= pair[0] <= pair[1] <= 100:
                raise ConfigError(f"users.limits.{key}: expected [min, max] with 0 <= min <= max <= 100, got {pair}")


@dataclass(frozen=True, slots=True)
class UserLdapAttributes:
    """The directory attribute each per-user setting is read from; "" (the default): not read."""

    quarantine: str = ""
    tag_probable: str = ""
    tag_certain: str = ""
    quarantine_at: str = ""
    reject_at: str = ""
    allow_senders: str = ""
    block_senders: str = ""
    digest: str = ""
    language: str = ""

    def __post_init__(self) -> None:
        for key in USER_SETTINGS:
            if not re.fullmatch(r"([A-Za-z][A-Za-z0-9-]*)?", getattr(self, key)):
                raise ConfigError(f"users.ldap.{key}: expected an LDAP attribute name, got {getattr(self, key)!r}")

    def named(self) -> dict[str, str]:
        """setting -> attribute, for the settings that are read from the directory."""
        return {key: getattr(self, key) for key in USER_SETTINGS if getattr(self, key)}


@dataclass(frozen=True, slots=True)
class UsersSettings:
    """Per-user settings (`pipeline.state.users`): the site's defaults, limits and directory attributes.

    A user's value comes from what they set themselves (the `poststelle.users` topic), else from the
    directory, else from here; thresholds have no default here (None: the spam stage's own)."""

    quarantine: bool = False  # spam held for the user instead of delivered tagged
    digest: str = "daily"  # quarantine digest: daily, weekly or off
    language: str = "de"  # of the digest and the portal: de or en
    max_list_entries: int = 500  # per allow or block list of one user
    limits: UserLimits = field(default_factory=UserLimits)
    ldap: UserLdapAttributes = field(default_factory=UserLdapAttributes)

    def __post_init__(self) -> None:
        if self.digest not in DIGESTS:
            raise ConfigError(f"users.digest: expected one of {', '.join(DIGESTS)}, got {self.digest!r}")
        if self.language not in LANGUAGES:
            raise ConfigError(f"users.language: expected one of {', '.join(LANGUAGES)}, got {self.language!r}")
        if not 1 <= self.max_list_entries <= 10_000:
            raise ConfigError(f"users.max_list_entries: expected 1..10000, got {self.max_list_entries}")
