"""Doing what a person asked with one entry, through `QuarantineActions` (and the user settings).

The user's pages, the admin's and the digest links all act through `perform`, which turns what can
go wrong into a sentence for the person: a refusal (`ActionRefused`: already released, needs an
admin, ...), a setting that is not valid, or Kafka not answering (nothing was done; try again).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from aiokafka.errors import KafkaError
from starlette.exceptions import HTTPException
from starlette.requests import Request

from consumers.services.portal.core import portal_of
from consumers.services.portal.usersettings import block_sender
from pipeline.state.quarantine import Entry
from pipeline.state.quarantine_actions import ActionRefused
from pipeline.state.users import SettingError, UserSettingsUnavailable

__all__ = ["Done", "perform", "REQUESTED"]

log = logging.getLogger(__name__)

REQUESTED = "Release requested: an administrator decides whether this message is delivered."


@dataclass(frozen=True, slots=True)
class Done:
    """What became of an action: done or refused, and a sentence for the person."""

    ok: bool
    text: str


async def perform(request: Request, entry: Entry, action: str, by: str, *, admin: bool = False,
                  token: str = "") -> Done:
    """Do `action` on `entry`: release, release_learn, request, delete, allow_sender, block_sender, and
    for an admin approve and deny. A release of an entry that needs an admin's approval is a request
    unless `admin`."""
    portal = portal_of(request)
    actions = portal.actions
    try:
        if action in ("release", "release_learn"):
            if entry.needs_approval and not admin:
                await actions.request_release(entry.id, by)
                return Done(True, REQUESTED)
            await actions.release(entry.id, by, learn_ham=action == "release_learn", token=token, admin=admin)
            learned = " and learned as not spam" if action == "release_learn" else ""
            return Done(True, f"Released{learned}: the message is on its way to {entry.recipient}.")
        if action == "request":
            await actions.request_release(entry.id, by)
            return Done(True, REQUESTED)
        if action == "approve" and admin:
            await actions.approve(entry.id, by)
            return Done(True, f"Approved: the message is on its way to {entry.recipient}.")
        if action == "deny" and admin:
            await actions.deny(entry.id, by)
            return Done(True, "Request denied: the message stays in the quarantine.")
        if action == "delete":
            await actions.delete(entry.id, by)
            return Done(True, "Deleted.")
        if action == "allow_sender":
            change = await actions.allow_sender(entry.id, by, token=token)
            return Done(True, f"{entry.sender} is on the list of allowed senders of {change.address}.")
        if action == "block_sender":
            return await _block_sender(request, entry, by)
    except ActionRefused as exc:
        return Done(False, f"Not done: {exc.reason}")
    except (SettingError, UserSettingsUnavailable) as exc:
        return Done(False, f"Not done: {exc}")
    except (KafkaError, OSError, TimeoutError) as exc:
        log.warning("quarantine %s: %s by %s failed: %r", entry.id, action, by, exc)
        return Done(False, "Not done: the mail system did not answer. Try again in a minute.")
    raise HTTPException(404)


async def _block_sender(request: Request, entry: Entry, by: str) -> Done:
    sender = entry.sender.lower()
    if not sender:
        return Done(False, "Not done: this message has no sender address (it is a bounce).")
    added = await block_sender(portal_of(request).users, entry.recipient, sender, by)
    return Done(True, f"{sender} is {'now' if added else 'already'} on the list of blocked senders.")
