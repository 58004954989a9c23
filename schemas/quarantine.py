"""The events of the quarantine as a product: what people did with held mail, and the digests sent.

Both travel on the quarantine topic (``<prefix>.quarantine``) next to the `quarantined` and `held`
events they refer to, so the quarantine's state is one fold over one topic
(`pipeline/state/quarantine.py`) and every instance of the portal, the digest service and the CLI
agrees on it.

An *entry* is one held message (or held part) for one recipient; its id is
`pipeline.state.quarantine.entry_id(event id, recipient)`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from schemas.base import Event

__all__ = ["QuarantineAction", "DigestSent", "ACTIONS"]

ACTIONS = ("release", "request_release", "approve", "deny", "delete", "expire")


@dataclass(frozen=True, slots=True, kw_only=True)
class QuarantineAction(Event):
    """Somebody (or the cleanup) did something with one quarantine entry. Keyed by message id.

    `release` and `approve` re-inject the stored message for `recipient` after the stage that held
    it, in the same Kafka transaction as this event: `released_as` is the message id of that copy
    (the original's, or for a held part a derived one) and `topic` where it went. `by` names who
    acted: ``portal:<address>``, ``link:<address>`` (a digest link), ``admin:<address>``,
    ``cli:<login>@<host>``, ``cleanup``.
    """

    type: Literal["quarantine_action"] = "quarantine_action"
    entry: str
    recipient: str
    action: Literal["release", "request_release", "approve", "deny", "delete", "expire"]
    by: str
    learn_ham: bool = False  # the release also learned the message as ham
    allow_sender: bool = False  # the release also put the sender on the recipient's allow list
    released_as: str = ""
    topic: str = ""
    token: str = ""  # the id of the link token used (a digest link), for single use
    note: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class DigestSent(Event):
    """The digest service mailed `user` a digest listing these entries. Keyed by the user's address.

    Written in the same transaction as the digest's own `received` event: an entry listed here is
    never listed in a digest again, and a digest that was not sent is not recorded.
    """

    type: Literal["digest_sent"] = "digest_sent"
    user: str
    entries: list[str] = field(default_factory=list)
    digest_message_id: str = ""
    language: str = "de"
