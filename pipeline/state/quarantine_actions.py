"""What people do with quarantined mail: release, request, approve, deny, delete; and expiry.

Every action is a `quarantine_action` event on the quarantine topic, so the state is rebuilt from the
log and every portal instance agrees (`pipeline.state.quarantine`). A release re-injects the stored
message for that one recipient *after the stage that held it*: a `stage_result` on
``checked.<stage>``, written in the same Kafka transaction as the action, so the stages after it
(a released spam is still virus-scanned when the virus stage comes later) and the route stage run,
and the release happens exactly when its record exists. A held part is released as the original
message with that part restored (other parts still held stay replaced by their notice), under a
message id derived from the entry: the delivery ledger keys on message id, recipient and
destination, and the copy without the part was delivered already.

A double click: actions on one entry are serialised by a lock, the local state learns the action
as soon as it is committed, and a second release is refused ("already released"). A second
process racing the first would still be stopped by the ledger (same message id, same recipient).
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from weakref import WeakValueDictionary

from pipeline.blobstore import BlobNotFound, BlobStore
from pipeline.bus import Topics
from pipeline.producers import TransactionalProducer
from pipeline.settings import Settings
from pipeline.state.quarantine import Entry, QuarantineView
from pipeline.state.users import TABLE, Change, UserSettings, apply_changes
from schemas.events import (
    Edit,
    Held,
    QuarantineAction,
    Result,
    SpamLearned,
    StageResult,
    UserPrefValues,
    UserSettingsChanged,
    encode_event,
)
from schemas.ids import derived_id

__all__ = ["ActionRefused", "QuarantineActions", "HamLearner"]

log = logging.getLogger(__name__)

# raw message, message id → its ham `spam_learned` event (None: nothing to learn); given by the composition root
HamLearner = Callable[[bytes, str], SpamLearned | None]


class ActionRefused(Exception):
    """The action cannot be done; `reason` says why in words for the person who asked."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class QuarantineActions:
    """Acts on the entries of `view.state`, writing through `producer` (one transaction per action)."""

    def __init__(self, settings: Settings, view: QuarantineView, producer: TransactionalProducer, blobs: BlobStore,
                 *, users: UserSettings | None = None, learn_ham: HamLearner | None = None) -> None:
        self.settings = settings
        self.view = view
        self.producer = producer
        self.blobs = blobs
        self.users = users
        self.learn_ham = learn_ham
        self.topics = Topics.from_settings(settings)
        self._locks: WeakValueDictionary[str, asyncio.Lock] = WeakValueDictionary()

    def _lock(self, entry_id: str) -> asyncio.Lock:
        lock = self._locks.get(entry_id)
        if lock is None:
            lock = self._locks[entry_id] = asyncio.Lock()
        return lock

    def entry(self, entry_id: str) -> Entry:
        entry = self.view.state.entries.get(entry_id)
        if entry is None:
            raise ActionRefused("there is no such message in the quarantine")
        return entry

    # -- the actions ------------------------------------------------------------------------------

    async def release(self, entry_id: str, by: str, *, learn_ham: bool = False, allow_sender: bool = False,
                      token: str = "", admin: bool = False) -> QuarantineAction:
        """Deliver the entry's message to its recipient after all. Refused when it is not held (any
        more), or needs an admin's approval and `admin` is false."""
        lock = self._lock(entry_id)
        async with lock:
            entry = self._open(entry_id)
            if entry.needs_approval and not admin:
                raise ActionRefused(f"a message held for {entry.category} is released only by an administrator; "
                                    "request its release instead")
            name = "approve" if entry.status == "requested" else "release"
            return await self._release(entry, name, by, learn_ham, allow_sender, token)

    async def approve(self, entry_id: str, by: str) -> QuarantineAction:
        """An admin releases an entry (a requested release, or one they decide on their own)."""
        return await self.release(entry_id, by, admin=True)

    async def request_release(self, entry_id: str, by: str, note: str = "") -> QuarantineAction:
        async with self._lock(entry_id):
            entry = self._open(entry_id)
            if entry.status == "requested":
                raise ActionRefused("its release was requested already; an administrator decides")
            return await self._write(entry, self._action(entry, "request_release", by, note=note))

    async def deny(self, entry_id: str, by: str, note: str = "") -> QuarantineAction:
        async with self._lock(entry_id):
            entry = self._open(entry_id)
            if entry.status != "requested":
                raise ActionRefused("nobody asked for its release")
            return await self._write(entry, self._action(entry, "deny", by, note=note))

    async def delete(self, entry_id: str, by: str, token: str = "") -> QuarantineAction:
        async with self._lock(entry_id):
            entry = self._open(entry_id)
            return await self._write(entry, self._action(entry, "delete", by, token=token))

    async def expire(self, entry_id: str) -> QuarantineAction:
        async with self._lock(entry_id):
            entry = self._open(entry_id)
            return await self._write(entry, self._action(entry, "expire", "cleanup"))

    async def allow_sender(self, entry_id: str, by: str, token: str = "") -> UserSettingsChanged:
        """Put the entry's sender on its recipient's allow list (the entry stays as it is)."""
        entry = self.entry(entry_id)
        change = await self._allow(entry, by)
        async with self.producer.transaction() as tx:
            await tx.send(self.topics.users, encode_event(change), key=change.address.encode())
        self._applied_users(change)
        return change

    # -- the parts --------------------------------------------------------------------------------

    def _open(self, entry_id: str) -> Entry:
        entry = self.entry(entry_id)
        if not entry.open:
            raise ActionRefused(f"this message was {entry.status} already")
        return entry

    def _action(self, entry: Entry, name: str, by: str, **fields) -> QuarantineAction:
        return QuarantineAction(message_id=entry.message_id, entry=entry.id, recipient=entry.recipient,
                                action=name, by=by, **fields)  # type: ignore[arg-type]

    async def _write(self, entry: Entry, action: QuarantineAction) -> QuarantineAction:
        async with self.producer.transaction() as tx:
            await tx.send(self.topics.quarantine, encode_event(action), key=entry.message_id.encode())
        self.view.state.apply_event(action)
        log.info("quarantine %s: %s by %s", entry.id, action.action, action.by)
        return action

    async def _release(self, entry: Entry, name: str, by: str, learn_ham: bool, allow_sender: bool,
                       token: str) -> QuarantineAction:
        if entry.stage not in self.settings.topology.stages:
            raise ActionRefused(f"the stage {entry.stage!r} that held it is no longer in the pipeline; "
                                "an operator must deliver it")
        copy = self._copy(entry, by)
        topic = self.topics.checked(entry.stage)
        learned = await self._learned(entry) if learn_ham else None
        change = await self._allow(entry, by) if allow_sender else None
        action = self._action(entry, name, by, learn_ham=learned is not None, allow_sender=change is not None,
                              released_as=copy.message_id, topic=topic, token=token)
        async with self.producer.transaction() as tx:
            await tx.send(topic, encode_event(copy), key=copy.message_id.encode())
            await tx.send(self.topics.quarantine, encode_event(action), key=entry.message_id.encode())
            if learned is not None:
                await tx.send(self.topics.spam_learn, encode_event(learned), key=learned.digest.encode())
            if change is not None:
                await tx.send(self.topics.users, encode_event(change), key=change.address.encode())
        self.view.state.apply_event(action)
        if change is not None:
            self._applied_users(change)
        log.info("quarantine %s: %s by %s, re-injected as %s on %s", entry.id, name, by, copy.message_id, topic)
        return action

    def _copy(self, entry: Entry, by: str) -> StageResult:
        """The `stage_result` that sends the message on to the stage after the one that held it."""
        event = entry.event
        if isinstance(event, Held):
            message = dataclasses.replace(event.message, message_id=derived_id(entry.id, "release"))
            result = Result(stage=entry.stage, verdict="pass", details={"released": entry.id, "part": entry.part,
                                                                        "by": by})
            return StageResult(message_id=message.message_id, result=result, message=message,
                               recipients=[entry.recipient], history=list(event.results),
                               edits=self._still_held(entry))
        own = event.results[-1] if event.results and event.results[-1].stage == entry.stage else None
        result = own or Result(stage=entry.stage, verdict="pass")
        history = event.results[:-1] if own is not None else list(event.results)
        edits = [e for e in event.edits if not e.recipients or entry.recipient in e.recipients]
        return StageResult(message_id=entry.message_id, result=result, message=event.message,
                           recipients=[entry.recipient], history=history, edits=edits,
                           replacements=list(event.replacements))

    def _still_held(self, entry: Entry) -> list[Edit]:
        """Notices in place of the message's other parts still held for the same recipient."""
        edits = []
        for other in self.view.state.by_message(entry.message_id):
            if other.id == entry.id or other.kind != "part" or other.recipient != entry.recipient or not other.open:
                continue
            held = other.event
            assert isinstance(held, Held)
            label = f'"{held.filename}"' if held.filename else f"an unnamed {held.content_type} part"
            edits.append(Edit(stage=entry.stage, kind="replace_part", part=held.part, sha256=held.sha256,
                              value=f"The attachment {label} is still held in quarantine.\n"
                                    f"Reason: {'; '.join(held.reasons)}\n"))
        return edits

    async def _learned(self, entry: Entry) -> SpamLearned | None:
        if self.learn_ham is None:
            raise ActionRefused("learning is not available here")
        try:
            raw = await asyncio.to_thread(self.blobs.get, entry.event.message.blob)
        except BlobNotFound:
            raise ActionRefused("the stored message is gone; it cannot be released") from None
        return self.learn_ham(raw, entry.message_id)

    async def _allow(self, entry: Entry, by: str) -> UserSettingsChanged:
        if self.users is None:
            raise ActionRefused("user settings are not available here")
        sender = entry.sender.lower()
        if not sender or "@" not in sender:
            raise ActionRefused("the message has no sender address to allow")
        explained = await self.users.explain(entry.recipient)
        own = explained.last.settings if explained.last is not None else UserPrefValues()
        values = apply_changes(own, explained.prefs, [Change("allow_senders", "add", (sender,))], self.settings.users)
        return UserSettingsChanged(address=explained.key, settings=values, changed=["allow_senders"], by=by)

    def _applied_users(self, change: UserSettingsChanged) -> None:
        assert self.users is not None
        self.users.apply(TABLE, change.address, encode_event(change))
