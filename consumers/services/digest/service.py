"""The digest service: each user's new quarantine entries mailed once, and expired entries removed.

**Digests.** Once a day at `digest.time` (local time) every user with open entries that no digest
listed yet (`QuarantineState.undigested`) and whose `digest` setting is due that day (`daily`;
`weekly` on `digest.weekday`; never `off`) gets one mail (`compose.py`). The mail is stored in the
blob store and injected like a DSN, from the null sender with `listener` ``digest``
(`pipeline.mail.inject`): the stages let it through untouched, route delivers it. Its `received`
event and the `digest_sent` event naming its entries are written in ONE Kafka transaction: either
both exist or neither, so a crash mid-run sends no second digest for the same entries and loses none
(a stored blob without its events is only an orphan). The state learns the `digest_sent` at once,
so a second run never lists an entry again, even before the view has read it back.

**Cleanup.** Every `quarantine.cleanup_every` the open entries past their `expires` get an `expire`
action (`QuarantineActions.expire`, the user `cleanup`). A held message's blob is then deleted once
no open entry refers to it any more, no entry of it changed in the last `SETTLE` seconds (a copy
released just now may still be on its way through the stages), and the delivery ledger holds no
deferred delivery of it (the retry service still needs the bytes). Deleting is repeated by every
cleanup and harmless when the blob is gone.

**Retention** (`[blobs] retention`, default 30 days; `pipeline.blob_settings`). The same cleanup
deletes every other blob last stored longer ago than that: delivered and bounced mail, DSNs,
digests, mail that was refused after its 250. It leaves alone a blob any quarantine entry refers to
(the entries decide, above) and one a deferred delivery still needs. Temporary files of a writer that
died between writing and renaming go after a day.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from consumers.services.digest.compose import compose_digest
from consumers.services.digest.schedule import is_due, next_run, parse_time_of_day, parse_weekday, seconds_until
from pipeline.blobstore import BlobStore, FileBlobStore
from pipeline.broker import describe
from pipeline.bus import Topics
from pipeline.links import link_key
from pipeline.mail.inject import DIGEST_LISTENER, inject_message
from pipeline.metrics import BLOBS_DELETED, read_at_scrape
from pipeline.producers import TransactionalProducer
from pipeline.settings import Settings
from pipeline.state.ledger import Ledger
from pipeline.state.quarantine import Entry, QuarantineState, QuarantineView
from pipeline.state.quarantine_actions import ActionRefused, QuarantineActions
from pipeline.state.users import SettingError, UserSettings, UserSettingsUnavailable
from schemas.events import DigestSent, encode_event, epoch_from_iso
from schemas.ids import new_id

__all__ = ["Planned", "DigestSender", "Cleanup", "CleanupStats", "DigestService", "run_digest_service",
           "digest_sender_address"]

log = logging.getLogger(__name__)

SETTLE = 3600.0  # seconds after an entry's last action before its blob may go
RETRY_AFTER = 300.0  # seconds before a run that failed (broker away, settings unreadable) is tried again
START_TIMEOUT = 30.0  # seconds to wait for the quarantine and the users topics to be replayed


def digest_sender_address(settings: Settings) -> str:
    """`digest.sender`, else postmaster of the first local domain (the bounce service's postmaster)."""
    domain = (settings.ingress.local_domains or [settings.ingress.hostname])[0]
    return settings.digest.sender or f"postmaster@{domain}"


@dataclass(slots=True)
class Planned:
    """One digest to send: to `user`, in `language`, listing `entries` (oldest first)."""

    user: str
    language: str
    frequency: str
    entries: list[Entry]


class DigestSender:
    """Plans and sends digests from a quarantine state (the service's view, or a CLI's one-shot read)."""

    def __init__(self, settings: Settings, state: QuarantineState, users: UserSettings,
                 producer: TransactionalProducer, blobs: BlobStore, key: bytes) -> None:
        self.settings = settings
        self.state = state
        self.users = users
        self.producer = producer
        self.blobs = blobs
        self.key = key
        self.topics = Topics.from_settings(settings)
        self.sender = digest_sender_address(settings)

    async def plan(self, *, day: date | None, only: str | None = None) -> list[Planned]:
        """The digests due: of the run of `day` (None: now, by hand, for every user whose digest is not
        off), or for the user `only` whatever their setting. A user whose settings cannot be read now
        is left for the next run (their entries wait)."""
        local = {d.lower() for d in self.settings.ingress.local_domains}
        # only the site's own users: a part held from mail leaving the site is no business of its recipient
        wanted = {e.recipient.lower() for e in self.state.entries.values()
                  if e.open and e.recipient.rpartition("@")[2].lower() in local}
        if only is not None:
            wanted &= {only.lower()}
        weekday = parse_weekday(self.settings.digest.weekday)
        planned = []
        for user in sorted(wanted):
            entries = self.state.undigested(user)
            if not entries:
                continue
            try:
                prefs = await self.users.prefs(user)
            except UserSettingsUnavailable as exc:
                log.warning("digest: %s left for the next run: %s", user, exc)
                continue
            except SettingError:  # an address the settings cannot name: the site's defaults
                prefs = None
            frequency = prefs.digest if prefs is not None else self.settings.users.digest
            language = prefs.language if prefs is not None else self.settings.users.language
            due = only is not None or (is_due(frequency, day, weekday) if day is not None else frequency != "off")
            if due:
                planned.append(Planned(user, language, frequency, entries))
        return planned

    async def send(self, planned: Planned) -> DigestSent:
        """Compose, store and inject one digest; its `received` and `digest_sent` in one transaction."""
        s = self.settings
        mail = compose_digest(planned.user, planned.entries, language=planned.language, key=self.key,
                              base_url=s.web.url, sender=self.sender, from_name=s.digest.from_name,
                              hostname=s.ingress.hostname)
        message_id = new_id()
        received = await asyncio.to_thread(
            inject_message, self.blobs, mail.raw, message_id=message_id, event_id=new_id(), mail_from="",
            rcpt_to=[planned.user], hostname=s.ingress.hostname, listener=DIGEST_LISTENER)
        sent = DigestSent(message_id=message_id, user=planned.user, entries=[e.id for e in planned.entries],
                          digest_message_id=message_id, language=planned.language)
        async with self.producer.transaction() as tx:
            await tx.send(self.topics.received, encode_event(received), key=message_id.encode())
            await tx.send(self.topics.quarantine, encode_event(sent), key=planned.user.encode())
        self.state.apply_event(sent)  # listed: not again, whenever the view reads it back
        log.info("digest %s to %s: %d entries", message_id, planned.user, len(planned.entries))
        return sent

    async def run(self, *, day: date | None, only: str | None = None) -> tuple[list[DigestSent], int]:
        """Send every digest due; returns those sent and how many failed (they are tried again next run)."""
        sent, failed = [], 0
        for planned in await self.plan(day=day, only=only):
            try:
                sent.append(await self.send(planned))
            except Exception as exc:  # the broker, the blob store: this user's entries wait for the next run
                failed += 1
                log.warning("digest to %s not sent: %s", planned.user, describe(exc))
        return sent, failed


@dataclass(slots=True)
class CleanupStats:
    expired: list[str] = field(default_factory=list)  # entry ids
    blobs_deleted: int = 0
    blobs_kept: int = 0  # blobs of closed entries still needed (deferred delivery, a recent release)
    blobs_aged_out: int = 0  # blobs past `[blobs] retention` that nothing needed
    temporaries_removed: int = 0


class Cleanup:
    """Expires entries past their lifetime and deletes blobs nothing needs any more.

    `retention`: seconds after its last store that a blob no entry and no deferred delivery needs is
    deleted; None keeps such blobs for ever."""

    def __init__(self, state: QuarantineState, actions: QuarantineActions, ledger: Ledger, blobs: BlobStore,
                 retention: float | None = None) -> None:
        self.state = state
        self.actions = actions
        self.ledger = ledger
        self.blobs = blobs
        self.retention = retention

    async def run(self, now: float | None = None) -> CleanupStats:
        now = time.time() if now is None else now
        stats = CleanupStats()
        for entry in self.state.expired(now):
            try:
                await self.actions.expire(entry.id)
                stats.expired.append(entry.id)
            except ActionRefused:  # released or deleted meanwhile
                pass
        await self.ledger.catch_up()
        deferred = {d.routed.message.blob.sha256 for d in self.ledger.deferred() if d.routed is not None}
        for entries in self._by_blob().values():
            if any(e.open for e in entries) or not any(e.status == "expired" for e in entries):
                continue
            blob = entries[0].event.message.blob
            if blob.sha256 in deferred or now - self._last_change(entries) < SETTLE:
                stats.blobs_kept += 1
                continue
            if await asyncio.to_thread(self.blobs.delete, blob):
                stats.blobs_deleted += 1
                log.info("cleanup: blob %s of message %s deleted", blob.sha256, entries[0].message_id)
        if self.retention is not None:
            needed = deferred.union(self._by_blob())
            leftovers = self.blobs.leftovers_removed
            stats.blobs_aged_out = await asyncio.to_thread(self.blobs.expire, now - self.retention, needed)
            stats.temporaries_removed = self.blobs.leftovers_removed - leftovers
        return stats

    def _by_blob(self) -> dict[str, list[Entry]]:
        found: dict[str, list[Entry]] = {}
        for entry in self.state.entries.values():
            found.setdefault(entry.event.message.blob.sha256, []).append(entry)
        return found

    @staticmethod
    def _last_change(entries: list[Entry]) -> float:
        return max(epoch_from_iso(a.time) for e in entries for a in [*e.actions, e.event])


class DigestService:
    """The schedule: digests at `digest.time`, the cleanup every `quarantine.cleanup_every`.

    `clock` (POSIX seconds) and `pause` (wait so long; False when stopped meanwhile) are the real
    ones unless a test runs the schedule through days in an instant."""

    def __init__(self, settings: Settings, sender: DigestSender, cleanup: Cleanup, *,
                 clock: Callable[[], float] = time.time,
                 pause: Callable[[asyncio.Event, float], Awaitable[bool]] | None = None) -> None:
        self.at = parse_time_of_day(settings.digest.time)
        self.cleanup_every = settings.quarantine.cleanup_seconds
        self.retention_text = settings.blobs.retention
        self.sender = sender
        self.cleanup = cleanup
        self.clock = clock
        self.pause = pause or (lambda stop, seconds: _until_stopped(stop, asyncio.sleep(seconds)))

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock())

    async def loop(self, stop: asyncio.Event) -> None:
        due = next_run(self._now(), self.at)
        day = due.date()  # the day of the slot decides who is due (weekly users), also when retried later
        cleanup_at = self.clock()  # one cleanup right at start
        while not stop.is_set():
            if self.clock() >= cleanup_at:
                cleanup_at = self.clock() + (self.cleanup_every if await self._cleanup() else RETRY_AFTER)
            if self._now() >= due:
                if await self._digests(day):
                    due = next_run(self._now(), self.at)
                    day = due.date()
                else:  # the users not reached wait for the retry, not for tomorrow
                    due = self._now() + timedelta(seconds=RETRY_AFTER)
            wait = min(cleanup_at - self.clock(), seconds_until(due, self.clock()))
            if not await self.pause(stop, max(wait, 0.5)):
                return

    async def _digests(self, day: date) -> bool:
        try:
            sent, failed = await self.sender.run(day=day)
        except Exception as exc:
            log.warning("digest run of %s failed, tried again in %.0fs: %s", day, RETRY_AFTER, describe(exc))
            return False
        log.info("digest run of %s: %d sent, %d failed", day, len(sent), failed)
        return not failed

    async def _cleanup(self) -> bool:
        try:
            stats = await self.cleanup.run(self.clock())
        except Exception as exc:
            log.warning("quarantine cleanup failed, tried again in %.0fs: %s", RETRY_AFTER, describe(exc))
            return False
        if stats.expired or stats.blobs_deleted:
            log.info("quarantine cleanup: %d entries expired, %d blobs deleted, %d kept", len(stats.expired),
                     stats.blobs_deleted, stats.blobs_kept)
        for reason, count in (("quarantine", stats.blobs_deleted), ("retention", stats.blobs_aged_out),
                              ("leftover", stats.temporaries_removed)):
            BLOBS_DELETED.labels(reason).inc(count)
        if stats.blobs_aged_out or stats.temporaries_removed:
            log.info("blob retention: %d blobs older than %s deleted, %d temporary files removed",
                     stats.blobs_aged_out, self.retention_text, stats.temporaries_removed)
        return True


async def _until_stopped(stop: asyncio.Event, work: Awaitable[object]) -> bool:
    """Await `work`; False (and `work` cancelled) when `stop` is set first. Start-up waits for the
    broker as long as it takes, and a stop must still end it."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait([task, stopping], return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not task.done():
        task.cancel()
        return False
    task.result()
    return True


async def run_digest_service(settings: Settings, stop: asyncio.Event, on_ready: Callable[[], None] | None = None,
                             instance: str = "0") -> None:
    """Run the digest service until `stop` is set (the process `poststelle run digest`)."""
    blobs = FileBlobStore(settings.home / "blobs")
    view = QuarantineView(settings, client_id=f"digest-{instance}")
    users = UserSettings.from_settings(settings, client_id=f"digest-users-{instance}")
    producer = TransactionalProducer(settings.kafka, f"{settings.kafka.topic_prefix}.digest.{instance}")
    ledger = Ledger(settings.kafka, Topics.from_settings(settings).ledger, f"digest-{instance}")
    try:
        await view.start(START_TIMEOUT)
        await users.start(START_TIMEOUT)
        if not await _until_stopped(stop, ledger.start()):
            return
        while not (view.ready and users.ready):  # a run on a half-read state would send digests twice
            if not await _until_stopped(stop, asyncio.sleep(1.0)):
                return
        actions = QuarantineActions(settings, view, producer, blobs, users=users)
        sender = DigestSender(settings, view.state, users, producer, blobs, link_key(settings))
        cleanup = Cleanup(view.state, actions, ledger, blobs, settings.blobs.retention_seconds)
        service = DigestService(settings, sender, cleanup)
        if on_ready is not None:
            on_ready()
        with read_at_scrape("poststelle_quarantine_entries", "quarantine entries, by status", ["status"],
                            lambda: dict(Counter((e.status,) for e in view.state.entries.values()))):
            await service.loop(stop)
    finally:
        await producer.stop()
        await ledger.close()
        await users.close()
        await view.close()
