"""Per-user settings: what a user set themselves, what the directory holds, what the site says.

The settings (`pipeline.settings.USER_SETTINGS`): `quarantine` (spam held for the user instead of
delivered tagged), the thresholds `tag_probable`, `tag_certain`, `quarantine_at`, `reject_at` (spam
probabilities in %), `allow_senders` and `block_senders` (addresses or ``@domain``), `digest`
(daily, weekly, off) and `language` (de, en). Each value comes from the first of:

1. **self-set**: the user's own value, in the last `user_settings` event for the address on the
   compacted topic ``poststelle.users`` (keyed by the address; `poststelle user set`, later the
   quarantine portal). Every event holds all the self-set values after the change, so compaction
   may keep only the last one;
2. **the directory**: the attribute `[users.ldap]` names for the setting, read through
   `pipeline.clients.directory.Directory` and its cache (a change shows after `ldap.cache_ttl`);
3. **the site**: `[users]` (`quarantine`, `digest`, `language`); the thresholds have no site value
   here (None: the spam stage's own), the lists are empty (the site's lists are `poststelle list`).

A threshold from 1 or 2 is kept within `[users.limits]` (moved to the nearest limit; `explain` says
so); `poststelle user set` refuses one outside them. A value that is not valid (a directory value
such as ``maybe``, or a self-set value a newer release wrote) is passed over for the next source;
of a directory list only the entries that are not valid are left out.

With a directory (any attribute named in `[users.ldap]`) an alias resolves to its person: the
settings of ``sekretariat@`` are anna's. `UserSettings` replays the topic and follows it (like the
site's lists); `prefs` raises `UserSettingsUnavailable` while the topic is not replayed or the
directory does not answer, so the spam stage waits (a temporary failure) instead of guessing.
"""
from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pipeline import tables
from pipeline.bus import Topics
from pipeline.clients.directory import Directory, DirectoryUnavailable
from pipeline.mail.domains import InvalidName, normalize_address, normalize_domain
from pipeline.settings import DIGESTS, LANGUAGES, THRESHOLDS, USER_SETTINGS, Settings, UsersSettings
from pipeline.tables import KafkaTransport, Transport
from schemas.events import DecodeError, UserPrefValues, UserSettingsChanged, decode_event, encode_event

__all__ = ["TABLE", "UserPrefs", "Source", "Explained", "Change", "SettingError", "UserSettingsUnavailable",
           "UserSettings", "parse_change", "apply_changes", "normalize_user", "kafka_transport", "write_settings"]

log = logging.getLogger(__name__)

TABLE = "users"
LISTS = ("allow_senders", "block_senders")
_TRUE, _FALSE = {"on", "true", "yes", "1"}, {"off", "false", "no", "0"}


class SettingError(ValueError):
    """A per-user setting or value is not valid; the text says why."""


class UserSettingsUnavailable(Exception):
    """The settings cannot be known now (topic not replayed, directory not answering): try again later."""


# ---- what a user's settings are -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UserPrefs:
    """One user's effective settings. A threshold of None means the spam stage's own."""

    quarantine: bool = False
    tag_probable: float | None = None
    tag_certain: float | None = None
    quarantine_at: float | None = None
    reject_at: float | None = None
    allow_senders: tuple[str, ...] = ()
    block_senders: tuple[str, ...] = ()
    digest: str = "daily"
    language: str = "de"

    def allows(self, sender: str) -> bool:
        """Whether `sender` (an address) is on the user's allow list."""
        return _listed(self.allow_senders, sender)

    def blocks(self, sender: str) -> bool:
        """Whether `sender` (an address) is on the user's block list."""
        return _listed(self.block_senders, sender)


def _listed(entries: tuple[str, ...], sender: str) -> bool:
    """An entry is the address itself, or ``@domain`` for the domain and every name under it."""
    try:
        address = normalize_address(sender)
    except InvalidName:
        return False  # the null sender, or something no entry can name
    labels = address.rpartition("@")[2].split(".")
    return address in entries or any("@" + ".".join(labels[i:]) in entries for i in range(len(labels)))


@dataclass(frozen=True, slots=True)
class Source:
    """Where one effective value came from: "self" (`detail`: who and when), "ldap" (the attribute) or
    "site" (the config key). `clamped_from`: the value before the site's limits moved it; `passed_over`:
    values of earlier sources that were not valid, and why."""

    origin: Literal["self", "ldap", "site"]
    detail: str
    clamped_from: float | None = None
    passed_over: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Explained:
    """A user's settings with the source of each: `address` as asked, `key` whose settings they are
    (the person behind an alias), `in_directory` (None: no directory is read), `last` the last self-set change."""

    address: str
    key: str
    prefs: UserPrefs
    sources: Mapping[str, Source]
    in_directory: bool | None
    last: UserSettingsChanged | None


# ---- values: validated and normalised ------------------------------------------------------------


def normalize_user(address: str) -> str:
    try:
        return normalize_address(address)
    except InvalidName as exc:
        raise SettingError(str(exc)) from None


def _primary(mail: str) -> str:
    """A directory's primary address as the topic keys it (normalised like any address), when it can be."""
    try:
        return normalize_address(mail)
    except InvalidName:
        return mail


def _boolean(key: str, text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE | _FALSE:
        return word in _TRUE
    raise SettingError(f"{key}: expected on or off, got {text!r}")


def _percent(key: str, value: str | float) -> float:
    try:
        number = float(value)
    except ValueError:
        raise SettingError(f"{key}: expected a spam probability in % (0 to 100), got {value!r}") from None
    if not 0 <= number <= 100:  # NaN fails too
        raise SettingError(f"{key}: expected a spam probability in % (0 to 100), got {value!r}")
    return number


def _sender(key: str, text: str) -> str:
    entry = text.strip()
    try:
        return "@" + normalize_domain(entry[1:]) if entry.startswith("@") else normalize_address(entry)
    except InvalidName as exc:
        raise SettingError(f"{key}: {entry!r} is neither an address nor @domain: {exc}") from None


def _senders(key: str, entries: Iterable[str], max_entries: int | None = None) -> tuple[str, ...]:
    """Normalised entries, each once; more than `max_entries` is refused (checked when written, not when read,
    so a site that lowers the maximum does not take lists away)."""
    found = tuple(dict.fromkeys(_sender(key, e) for e in entries))
    if max_entries is not None and len(found) > max_entries:
        raise SettingError(f"{key}: {len(found)} entries, more than the site allows ({max_entries}, "
                           "users.max_list_entries)")
    return found


def _choice(key: str, text: str, choices: Sequence[str]) -> str:
    word = text.strip().lower()
    if word not in choices:
        raise SettingError(f"{key}: expected one of {', '.join(choices)}, got {text!r}")
    return word


def _split(text: str) -> list[str]:
    return [item for item in re.split(r"[,\s]+", text) if item]


def _own_value(key: str, value: Any) -> Any:
    """A self-set value (already typed by the event's schema), validated as `user set` would."""
    if key in THRESHOLDS:
        return _percent(key, value)
    if key in LISTS:
        return _senders(key, value)
    if key == "digest":
        return _choice(key, value, DIGESTS)
    if key == "language":
        return _choice(key, value, LANGUAGES)
    return value  # quarantine: the schema made it a bool


def _directory_value(key: str, values: tuple[str, ...]) -> Any:
    """A setting from its attribute's values: LDAP booleans (TRUE/FALSE), numbers, and for the language
    RFC 2798's preferredLanguage ("de-DE, en;q=0.8"). The lists: `_directory_list`."""
    first = values[0]
    if key == "quarantine":
        return _boolean(key, first)
    if key in THRESHOLDS:
        return _percent(key, first)
    if key == "language":
        return _choice(key, first.split(",")[0].split(";")[0].split("-")[0], LANGUAGES)
    return _choice(key, first, DIGESTS)


def _directory_list(key: str, values: tuple[str, ...]) -> tuple[tuple[str, ...], list[str]]:
    """The entries of a list attribute (one sender, or a comma-separated few, per value) that are valid,
    and why the others are not: one typo in the directory does not take a user's whole list away."""
    entries: list[str] = []
    errors: list[str] = []
    for item in (e for value in values for e in _split(value)):
        try:
            entries.append(_sender(key, item))
        except SettingError as exc:
            errors.append(str(exc))
    return tuple(dict.fromkeys(entries)), errors


# ---- changes (poststelle user set|reset, the portal) ----------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    """One edit of a user's own settings: set a value, add to / remove from a list, or reset (None)."""

    key: str
    op: Literal["set", "add", "remove", "reset"]
    value: Any = None


def parse_change(text: str, users: UsersSettings) -> Change:
    """``key=value``, or ``key+=entries`` / ``key-=entries`` for the sender lists (comma-separated),
    validated; a threshold outside the site's limits is refused. SettingError says why."""
    match = re.fullmatch(r"\s*([a-z_]+)\s*([+-]?=)(.*)", text, re.DOTALL)
    if not match:
        raise SettingError(f"{text!r}: expected key=value (keys: {', '.join(USER_SETTINGS)})")
    key, operator, raw = match.group(1), match.group(2), match.group(3).strip()
    if key not in USER_SETTINGS:
        raise SettingError(f"unknown setting {key!r} (known: {', '.join(USER_SETTINGS)})")
    if operator != "=" and key not in LISTS:
        raise SettingError(f"{key}: {operator} is for the lists ({', '.join(LISTS)}); use {key}=value")
    if key in LISTS:
        entries = _senders(key, _split(raw), users.max_list_entries)
        if operator != "=" and not entries:
            raise SettingError(f"{key}{operator}: name at least one address or @domain")
        return Change(key, {"=": "set", "+=": "add", "-=": "remove"}[operator], entries)
    if key == "quarantine":
        return Change(key, "set", _boolean(key, raw))
    if key in ("digest", "language"):
        return Change(key, "set", _choice(key, raw, DIGESTS if key == "digest" else LANGUAGES))
    value = _percent(key, raw)
    low, high = getattr(users.limits, key)
    if not low <= value <= high:
        raise SettingError(f"{key}: {value:g} is outside the site's limits {low:g} to {high:g} "
                           f"(users.limits.{key})")
    return Change(key, "set", value)


def apply_changes(own: UserPrefValues, effective: UserPrefs, changes: Sequence[Change],
                  users: UsersSettings) -> UserPrefValues:
    """The self-set values after `changes`; `+=` and `-=` start from the effective list (whatever its source)."""
    values = {key: getattr(own, key) for key in USER_SETTINGS}
    for change in changes:
        if change.op in ("set", "reset"):
            is_list = change.key in LISTS and change.value is not None
            values[change.key] = list(change.value) if is_list else change.value
            continue
        current = list(values[change.key] if values[change.key] is not None else getattr(effective, change.key))
        if change.op == "add":
            current += [e for e in change.value if e not in current]
        else:
            missing = [e for e in change.value if e not in current]
            if missing:
                raise SettingError(f"{change.key}: not on the list: {', '.join(missing)}")
            current = [e for e in current if e not in change.value]
        values[change.key] = list(_senders(change.key, current, users.max_list_entries))
    return UserPrefValues(**values)


# ---- the in-memory copy ---------------------------------------------------------------------------


class UserSettings:
    """The self-set settings replayed from ``poststelle.users`` and followed; `prefs` adds the directory's
    and the site's (transport None: memory only; directory None: no attributes, no alias resolution)."""

    def __init__(self, transport: Transport | None, users: UsersSettings, directory: Directory | None = None,
                 *, retry_every: float | None = None) -> None:
        self.transport = transport
        self.users = users
        self.directory = directory
        self.attributes = users.ldap.named()  # setting -> attribute
        self.own: dict[str, UserSettingsChanged] = {}  # address -> the last self-set change
        self.ignored = 0  # records that were not user_settings events
        self._follower = tables.Follower(transport, self.apply, label="users", retry_every=retry_every,
                                         on_caught_up=lambda: log.info("users: replayed (%d)", len(self.own)))

    @classmethod
    def from_settings(cls, settings: Settings, client_id: str = "users") -> UserSettings:
        """On the topic, with a `Directory` on `[ldap]` when `[users.ldap]` names any attribute."""
        directory = Directory.from_settings(settings.ldap) if settings.users.ldap.named() else None
        return cls(kafka_transport(settings, client_id), settings.users, directory)

    @property
    def ready(self) -> bool:
        return self._follower.ready

    async def start(self, timeout: float = 15.0) -> bool:
        """Replay the topic; return whether that finished within `timeout` (it goes on if not)."""
        return await self._follower.start(timeout)

    async def close(self) -> None:
        await self._follower.close()
        if self.directory is not None:
            await self.directory.close()

    def apply(self, table: str, key: str, value: bytes | None) -> None:
        """Take one record: a user's last change, or a tombstone (the user's own settings are gone)."""
        if value is None:
            self.own.pop(key, None)
            return
        try:
            event = decode_event(value, expect=(UserSettingsChanged,))
        except DecodeError as exc:
            self.ignored += 1
            log.warning("users: ignoring record %r: %s", key, exc)
            return
        if event.address != key:
            self.ignored += 1
            log.warning("users: ignoring record %r: it is about %r", key, event.address)
            return
        self.own[key] = event

    async def prefs(self, address: str) -> UserPrefs:
        """The effective settings of `address` (UserSettingsUnavailable: try again later)."""
        return (await self.explain(address)).prefs

    async def explain(self, address: str) -> Explained:
        """The effective settings of `address` and where each came from."""
        asked = normalize_user(address)
        if not self.ready:
            raise UserSettingsUnavailable("the per-user settings are not replayed yet")
        key, found, in_directory = asked, {}, None
        if self.directory is not None:
            try:
                entry = await self.directory.lookup(asked)
                found = await self.directory.attributes(asked, list(self.attributes.values())) or {}
            except DirectoryUnavailable as exc:
                raise UserSettingsUnavailable(f"the directory did not answer: {exc}") from None
            in_directory = entry is not None
            key = _primary(entry.mail) if entry is not None and entry.mail else asked
        last = self.own.get(key) or self.own.get(asked)
        values, sources = {}, {}
        for name in USER_SETTINGS:
            values[name], sources[name] = self._resolve(name, last, found)
        prefs = UserPrefs(**{k: tuple(v) if k in LISTS else v for k, v in values.items()})
        return Explained(asked, key, prefs, sources, in_directory, last)

    def _resolve(self, name: str, last: UserSettingsChanged | None, found: Mapping[str, tuple[str, ...]]
                 ) -> tuple[Any, Source]:
        passed_over: list[str] = []
        own = getattr(last.settings, name) if last is not None else None
        if own is not None:
            try:
                source = Source("self", f"{last.by or 'someone'} at {last.time}")
                return self._clamped(name, _own_value(name, own), source)
            except SettingError as exc:
                passed_over.append(f"self-set: {exc}")
        attribute = self.attributes.get(name)
        if attribute and found.get(attribute) and name in LISTS:
            entries, errors = _directory_list(name, found[attribute])
            passed_over += [f"{attribute}: {error}" for error in errors]
            return entries, Source("ldap", attribute, passed_over=tuple(passed_over))
        if attribute and found.get(attribute):
            try:
                value = _directory_value(name, found[attribute])
                return self._clamped(name, value, Source("ldap", attribute, passed_over=tuple(passed_over)))
            except SettingError as exc:
                passed_over.append(f"{attribute}: {exc}")
        if name in THRESHOLDS:
            return None, Source("site", "the spam stage's ([stages.spam])", passed_over=tuple(passed_over))
        if name in LISTS:
            return (), Source("site", "no list of the site's", passed_over=tuple(passed_over))
        return getattr(self.users, name), Source("site", f"users.{name}", passed_over=tuple(passed_over))

    def _clamped(self, name: str, value: Any, source: Source) -> tuple[Any, Source]:
        if name not in THRESHOLDS:
            return value, source
        low, high = getattr(self.users.limits, name)
        kept = min(max(value, low), high)
        return kept, (source if kept == value else dataclasses.replace(source, clamped_from=value))


# ---- changing the topic ---------------------------------------------------------------------------


def kafka_transport(settings: Settings, client_id: str = "users") -> KafkaTransport:
    return KafkaTransport(settings.kafka, {TABLE: Topics.from_settings(settings).users}, client_id=client_id)


async def write_settings(transport: Transport, event: UserSettingsChanged) -> None:
    """Write a user's change (keyed by `event.address`); returns once the log has it. The transport must be open."""
    delivery = await transport.write(TABLE, event.address, encode_event(event))
    if delivery is not None:
        await delivery  # acks=all
