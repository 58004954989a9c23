"""The per-user settings a user set themselves (`pipeline/state/users.py` folds them).

`UserSettingsChanged` travels on the compacted topic ``<prefix>.users`` keyed by the address.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from schemas.base import Event

__all__ = ["UserPrefValues", "UserSettingsChanged"]


@dataclass(frozen=True, slots=True, kw_only=True)
class UserPrefValues:
    """The settings a user set themselves; None: not set (the directory's value or the site's applies).

    Thresholds are spam probabilities in %; sender entries are addresses or ``@domain``."""

    quarantine: bool | None = None
    tag_probable: float | None = None
    tag_certain: float | None = None
    quarantine_at: float | None = None
    reject_at: float | None = None
    allow_senders: list[str] | None = None
    block_senders: list[str] | None = None
    digest: str | None = None  # daily, weekly, off
    language: str | None = None  # de, en


@dataclass(frozen=True, slots=True, kw_only=True)
class UserSettingsChanged(Event):
    """Someone changed a user's own settings: every self-set value after the change, who, and which keys.

    On the compacted topic ``poststelle.users`` keyed by the address, whose last record is the
    user's state; analytics keeps every change."""

    type: Literal["user_settings"] = "user_settings"
    address: str  # normalised: lower case, IDNA domain; the primary address when the directory knows it
    settings: UserPrefValues = field(default_factory=UserPrefValues)
    changed: list[str] = field(default_factory=list)  # the keys this change set or reset
    by: str = ""  # who: "cli:<login>@<host>", "portal:<address>"
