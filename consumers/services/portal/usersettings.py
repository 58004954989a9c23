"""The settings page's part of `pipeline.state.users`: read a user's effective settings, change their own.

A change is what `poststelle user set` writes (a `user_settings` event with every self-set value
after it), recorded with who made it: ``portal:<address>`` or ``link:<address>``. Only what the
form actually changed becomes the user's own value; the rest keeps coming from the directory or
the site.
"""
from __future__ import annotations

from collections.abc import Mapping

from pipeline.settings import UsersSettings
from pipeline.state.users import (
    TABLE,
    Change,
    Explained,
    SettingError,
    UserSettings,
    apply_changes,
    parse_change,
    write_settings,
)
from schemas.events import UserPrefValues, UserSettingsChanged, encode_event

__all__ = ["FORM_KEYS", "form_changes", "change_settings", "block_sender"]

FORM_KEYS = ("quarantine", "digest", "language", "allow_senders", "block_senders")


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.replace(",", "\n").splitlines() if line.strip()]


def form_changes(form: Mapping[str, str], current: Explained, users: UsersSettings) -> list[Change]:
    """The changes the settings form asks for (only values that differ); SettingError says what is wrong."""
    prefs = current.prefs
    changes: list[Change] = []
    quarantine = form.get("quarantine") == "on"
    if quarantine != prefs.quarantine:
        changes.append(parse_change(f"quarantine={'on' if quarantine else 'off'}", users))
    for key in ("digest", "language"):
        value = form.get(key, getattr(prefs, key))
        if value != getattr(prefs, key):
            changes.append(parse_change(f"{key}={value}", users))
    for key in ("allow_senders", "block_senders"):
        entries = _lines(form.get(key, ""))
        change = parse_change(f"{key}={','.join(entries)}", users)
        if tuple(change.value) != tuple(getattr(prefs, key)):
            changes.append(change)
    return changes


async def change_settings(store: UserSettings, address: str, changes: list[Change], by: str) -> UserSettingsChanged:
    """Write the user's own settings after `changes` (returns once the broker has them)."""
    explained = await store.explain(address)
    if explained.in_directory is False:
        raise SettingError(f"{address}: no person or group in the directory has this address")
    own = explained.last.settings if explained.last is not None else UserPrefValues()
    values = apply_changes(own, explained.prefs, changes, store.users)
    event = UserSettingsChanged(address=explained.key, settings=values, by=by,
                                changed=list(dict.fromkeys(c.key for c in changes)))
    assert store.transport is not None
    await write_settings(store.transport, event)
    store.apply(TABLE, event.address, encode_event(event))
    return event


async def block_sender(store: UserSettings, address: str, sender: str, by: str) -> bool:
    """Put `sender` on the user's block list (and off the allow list); False when it was there already.
    (Allowing a sender is `QuarantineActions.allow_sender`: a release may do it in the same transaction.)"""
    prefs = (await store.explain(address)).prefs
    entry = parse_change(f"block_senders+={sender}", store.users).value[0]
    changes = [] if entry in prefs.block_senders else [Change("block_senders", "add", (entry,))]
    if entry in prefs.allow_senders:
        changes.append(Change("allow_senders", "remove", (entry,)))
    if not changes:
        return False
    await change_settings(store, address, changes, by)
    return True
