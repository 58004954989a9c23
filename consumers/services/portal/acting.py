"""Doing what a person asked with one entry, through `QuarantineActions` (and the user settings).

The user's pages, the admin's and the digest links all act through `perform`, which turns what can
go wrong into a sentence for the person: a refusal (`ActionRefused`: already released, needs an
admin, ...), a setting that is not valid, or Kafka not answering (nothing was done; try again).
The sentence is in the request's language (`texts`); the reasons `QuarantineActions` and the user
settings give are English, and `refusal` says the known ones in German.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from aiokafka.errors import KafkaError
from starlette.exceptions import HTTPException
from starlette.requests import Request

from consumers.services.portal.core import portal_of
from consumers.services.portal.usersettings import block_sender
from consumers.services.portal.texts import language_of, t
from pipeline.state.quarantine import Entry
from pipeline.state.quarantine_actions import ActionRefused
from pipeline.state.users import SettingError, UserSettingsUnavailable

__all__ = ["Done", "perform", "refusal"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Done:
    """What became of an action: done or refused, a sentence for the person, and for a refusal its reason."""

    ok: bool
    text: str
    why: str = ""


def _refused(lang: str, why: str) -> Done:
    return Done(False, t("done.not_done", lang, why=why), why)


# The refusals of `QuarantineActions` and the user settings, in German (the rest stay as they are).
_GERMAN_REASONS = [
    (re.compile(r"there is no such message in the quarantine"), "diese Nachricht ist nicht in der Quarantäne"),
    (re.compile(r"a message held for (\S+) is released only by an administrator; request its release instead"),
     r"eine wegen \1 zurückgehaltene Nachricht gibt nur die Verwaltung frei; fordern Sie die Freigabe an"),
    (re.compile(r"its release was requested already; an administrator decides"),
     "die Freigabe ist schon angefordert; die Verwaltung entscheidet"),
    (re.compile(r"nobody asked for its release"), "niemand hat die Freigabe angefordert"),
    (re.compile(r"this message was (\w+) already"),
     lambda m: f"diese Nachricht wurde schon {t('status.' + m[1], 'de') if m[1] in _STATUSES else m[1]}"),
    (re.compile(r"the stored message is gone; it cannot be released"),
     "die gespeicherte Nachricht ist nicht mehr da; sie kann nicht zugestellt werden"),
    (re.compile(r"the message has no sender address to allow"), "die Nachricht hat keine Absenderadresse zum Erlauben"),
]
_STATUSES = ("released", "deleted", "expired")


def refusal(reason: str, lang: str) -> str:
    """A refusal's reason in `lang` (English as it came when no translation is known)."""
    if lang == "de":
        for pattern, german in _GERMAN_REASONS:
            if pattern.fullmatch(reason):
                return pattern.sub(german, reason)
    return reason


async def perform(request: Request, entry: Entry, action: str, by: str, *, admin: bool = False,
                  token: str = "") -> Done:
    """Do `action` on `entry`: release, release_learn, request, delete, allow_sender, block_sender, and
    for an admin approve and deny. A release of an entry that needs an admin's approval is a request
    unless `admin`."""
    portal = portal_of(request)
    actions = portal.actions
    lang = language_of(request)
    try:
        if action in ("release", "release_learn"):
            if entry.needs_approval and not admin:
                await actions.request_release(entry.id, by)
                return Done(True, t("done.requested", lang))
            await actions.release(entry.id, by, learn_ham=action == "release_learn", token=token, admin=admin)
            key = "done.released_learned" if action == "release_learn" else "done.released"
            return Done(True, t(key, lang, recipient=entry.recipient))
        if action == "request":
            await actions.request_release(entry.id, by)
            return Done(True, t("done.requested", lang))
        if action == "approve" and admin:
            await actions.approve(entry.id, by)
            return Done(True, t("done.approved", lang, recipient=entry.recipient))
        if action == "deny" and admin:
            await actions.deny(entry.id, by)
            return Done(True, t("done.denied", lang))
        if action == "delete":
            await actions.delete(entry.id, by)
            return Done(True, t("done.deleted", lang))
        if action == "allow_sender":
            change = await actions.allow_sender(entry.id, by, token=token)
            return Done(True, t("done.allowed", lang, sender=entry.sender, address=change.address))
        if action == "block_sender":
            return await _block_sender(request, entry, by, lang)
    except ActionRefused as exc:
        return _refused(lang, refusal(exc.reason, lang))
    except (SettingError, UserSettingsUnavailable) as exc:
        return _refused(lang, str(exc))
    except (KafkaError, OSError, TimeoutError) as exc:
        log.warning("quarantine %s: %s by %s failed: %r", entry.id, action, by, exc)
        return _refused(lang, t("done.no_answer", lang))
    raise HTTPException(404)


async def _block_sender(request: Request, entry: Entry, by: str, lang: str) -> Done:
    sender = entry.sender.lower()
    if not sender:
        return _refused(lang, t("done.no_sender", lang))
    added = await block_sender(portal_of(request).users, entry.recipient, sender, by)
    return Done(True, t("done.blocked" if added else "done.blocked_already", lang, sender=sender))
