"""Sending digests (who gets one, one transaction each, never twice) and the expiry cleanup.

The producer is a stand-in for aiokafka's transactional producer that records committed
transactions (and can fail its commit); the quarantine state is the real fold, the users' settings
the real `UserSettings` on the memory transport, the ledger the real one on the memory transport.
"""
from __future__ import annotations

import asyncio
import email
import os
import time
from datetime import date, datetime
from email.policy import default

import pytest

from consumers.services.digest.service import (
    Cleanup,
    CleanupStats,
    DigestSender,
    DigestService,
    digest_sender_address,
)
from pipeline.blobstore import BlobNotFound, FileBlobStore
from pipeline.bus import Topics
from pipeline.producers import TransactionalProducer
from pipeline.state.ledger import Ledger, ledger_key
from pipeline.state.quarantine import QuarantineState, QuarantineView, entry_id
from pipeline.state.quarantine_actions import QuarantineActions
from pipeline.state.users import TABLE, UserSettings
from pipeline.tables import MemoryLog, MemoryTransport
from schemas.events import (
    Client,
    Deferred,
    DigestSent,
    Envelope,
    QuarantineAction,
    Received,
    Reply,
    Routed,
    UserPrefValues,
    UserSettingsChanged,
    decode_event,
    encode_event,
    epoch_from_iso,
    iso_from_epoch,
)
from schemas.ids import new_id
from tests.consumers.services.digest.samples import ANNA, KEY, LENA, SETTINGS, quarantined
from tests.pipeline.state.test_quarantine_state import Recorder as QuarantineRecorder

TOPICS = Topics.from_settings(SETTINGS)
MAX = "max.mustermann@school.test"
MONDAY, TUESDAY = date(2026, 12, 7), date(2026, 12, 8)
AFTER_EXPIRY = epoch_from_iso("2027-01-10T00:00:00.000Z")


class Recorder(QuarantineRecorder):
    """The quarantine tests' producer stand-in, whose commit fails while `fail_commit` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_commit = False
        self.client = FakeClient()  # a failed transaction abandons the producer: it closes its client
        self._sender = None

    async def commit_transaction(self) -> None:
        if self.fail_commit:
            raise ConnectionError("the broker went away during the commit")
        await super().commit_transaction()


class FakeClient:
    async def close(self) -> None: ...


async def _users(**own: dict) -> UserSettings:
    users = UserSettings(None, SETTINGS.users)  # the memory transport instead of Kafka
    for address, values in own.items():
        event = UserSettingsChanged(address=address, settings=UserPrefValues(**values), changed=sorted(values), by="t")
        users.apply(TABLE, address, encode_event(event))
    await users.start()
    return users


@pytest.fixture
async def world(tmp_path):
    blobs = FileBlobStore(tmp_path / "blobs")
    view = QuarantineView(SETTINGS, "test", transport=MemoryTransport(MemoryLog(["quarantine"])))
    await view.start(1)
    recorder = Recorder()
    producer = TransactionalProducer(SETTINGS.kafka, "t", make=lambda *_: recorder)
    users = await _users(**{ANNA: {"digest": "weekly", "language": "en"}, MAX: {"digest": "off"}})
    sender = DigestSender(SETTINGS, view.state, users, producer, blobs, KEY)
    yield blobs, view, sender, recorder
    await view.close()


def _hold(blobs, view, rcpts, **kwargs):
    event = quarantined(blobs, rcpts, **kwargs)
    view.state.apply_event(event)
    return event


async def test_who_gets_a_digest_on_which_day(world) -> None:
    blobs, view, sender, _ = world
    _hold(blobs, view, [LENA, ANNA, MAX, "friend@ext.test"])  # the friend outside the site gets none
    monday = {p.user: (p.frequency, p.language) for p in await sender.plan(day=MONDAY)}
    assert monday == {LENA: ("daily", "de"), ANNA: ("weekly", "en")}  # max: off
    assert [p.user for p in await sender.plan(day=TUESDAY)] == [LENA]  # anna waits for her Monday
    assert [p.user for p in await sender.plan(day=None)] == [ANNA, LENA]  # by hand: all but off
    assert [p.user for p in await sender.plan(day=TUESDAY, only=MAX)] == [MAX]  # --user: asked for


async def test_one_digest_one_transaction_and_never_the_same_entries_again(world) -> None:
    blobs, view, sender, recorder = world
    first = _hold(blobs, view, [LENA], subject="one")
    _hold(blobs, view, [LENA], subject="two")
    sent, failed = await sender.run(day=MONDAY, only=LENA)
    assert failed == 0 and len(sent) == 1 and len(sent[0].entries) == 2
    (transaction,) = recorder.committed
    assert [(topic, key) for topic, key, _ in transaction] == [
        (TOPICS.received, sent[0].digest_message_id.encode()), (TOPICS.quarantine, LENA.encode())]
    received = decode_event(transaction[0][2], expect=(Received,))
    assert (received.listener, received.envelope.mail_from, received.envelope.rcpt_to) == ("digest", "", [LENA])
    mail = email.message_from_bytes(blobs.get(received.blob), policy=default)
    assert mail["Subject"] == "Quarantäne: 2 neue Nachrichten" and mail["From"].addresses[0].addr_spec == \
        digest_sender_address(SETTINGS) == "postmaster@school.test"
    assert received.headers.subject == mail["Subject"]
    recorded = decode_event(transaction[1][2], expect=(DigestSent,))
    assert recorded == sent[0] and recorded.user == LENA and recorded.language == "de"

    assert view.state.undigested(LENA) == []  # learned at once
    assert await sender.run(day=TUESDAY) == ([], 0) and len(recorder.committed) == 1
    later = _hold(blobs, view, [LENA], subject="three")
    sent, _ = await sender.run(day=TUESDAY)
    assert sent[0].entries == [entry_id(later.id, LENA)]  # only the new one
    assert entry_id(first.id, LENA) in view.state.digested[LENA]

    replay = QuarantineState.from_settings(SETTINGS)  # the fold from the log alone says the same
    for transaction in recorder.committed:
        replay.apply("quarantine", "", transaction[1][2])
    for entry in view.state.entries.values():
        replay.apply_event(entry.event)
    assert replay.undigested(LENA) == [] and replay.digested[LENA] == set(view.state.digested[LENA])


async def test_a_failed_commit_records_nothing_sends_nothing_and_the_next_run_sends_once(world) -> None:
    blobs, view, sender, recorder = world
    _hold(blobs, view, [LENA])
    recorder.fail_commit = True
    assert await sender.run(day=MONDAY) == ([], 1)
    assert recorder.committed == [] and len(view.state.undigested(LENA)) == 1  # no received, no digest_sent
    recorder.fail_commit = False
    sent, failed = await sender.run(day=MONDAY)
    assert (len(sent), failed, len(recorder.committed)) == (1, 0, 1)


# ---- the cleanup ---------------------------------------------------------------------------------


@pytest.fixture
async def cleanup(world):
    blobs, view, sender, recorder = world
    ledger = Ledger(SETTINGS.kafka, TOPICS.ledger, "test")
    ledger._log = MemoryTransport(MemoryLog(["ledger"]))  # the memory transport instead of Kafka
    await ledger.start()
    actions = QuarantineActions(SETTINGS, view, sender.producer, blobs)
    yield Cleanup(view.state, actions, ledger, blobs), ledger
    await ledger.close()


async def test_expired_entries_get_an_expire_action_and_their_blob_goes(world, cleanup) -> None:
    blobs, view, _, recorder = world
    run, _ = cleanup
    old = _hold(blobs, view, [LENA, ANNA], raw=b"Subject: old\r\n\r\nold\r\n")
    young = _hold(blobs, view, [LENA], raw=b"Subject: young\r\n\r\nyoung\r\n", time="2027-01-05T10:00:00.000Z")
    stats = await run.run(now=AFTER_EXPIRY)
    assert sorted(stats.expired) == sorted(e.id for e in view.state.entries.values() if e.message_id == old.message_id)
    actions = [decode_event(v, expect=(QuarantineAction,)) for t in recorder.committed for _, _, v in t]
    assert {(a.action, a.by) for a in actions} == {("expire", "cleanup")} and len(actions) == 2
    assert stats.blobs_deleted == 1
    with pytest.raises(BlobNotFound):
        blobs.get(old.message.blob)
    assert blobs.get(young.message.blob)  # still held
    again = await run.run(now=AFTER_EXPIRY)  # nothing more to do, and no error
    assert (again.expired, again.blobs_deleted) == ([], 0)


async def test_a_blob_stays_while_a_delivery_of_it_is_deferred_or_another_entry_is_open(world, cleanup) -> None:
    blobs, view, _, _ = world
    run, ledger = cleanup
    deferred = _hold(blobs, view, [LENA], raw=b"Subject: a\r\n\r\na\r\n")
    routed = Routed(message_id=deferred.message_id, destination="lmtp", recipients=[ANNA], message=deferred.message)
    waiting = Deferred(message_id=deferred.message_id, destination="lmtp", recipient=ANNA, attempt=1,
                       reply=Reply(code=452, text="mailbox full"), routed=routed)
    await ledger._log.write("ledger", ledger_key(deferred.message_id, ANNA, "lmtp"), encode_event(waiting))  # a sink's
    shared = _hold(blobs, view, [LENA], raw=b"Subject: b\r\n\r\nb\r\n")
    view.state.apply_event(quarantined(blobs, [ANNA], raw=b"Subject: b\r\n\r\nb\r\n", time="2027-01-09T00:00:00.000Z"))
    stats = await run.run(now=AFTER_EXPIRY)
    assert len(stats.expired) == 2 and stats.blobs_deleted == 0 and stats.blobs_kept == 1
    assert blobs.get(deferred.message.blob) and blobs.get(shared.message.blob)


# ---- the schedule, run through days on a clock of its own ---------------------------------------


class Calls:
    """Stands in for the sender and the cleanup: when each ran (and the sender can fail once)."""

    def __init__(self, clock) -> None:
        self.clock = clock
        self.digests: list[tuple[datetime, date]] = []
        self.cleanups: list[datetime] = []
        self.fail_next = False

    async def run(self, now: float | None = None, *, day: date | None = None):
        if now is not None:  # the cleanup's signature
            self.cleanups.append(datetime.fromtimestamp(now))
            return CleanupStats()
        self.digests.append((datetime.fromtimestamp(self.clock[0]), day))
        if self.fail_next:
            self.fail_next = False
            return [], 1
        return [], 0


async def test_the_schedule_sends_at_seven_each_day_retries_a_failed_run_and_cleans_up_hourly() -> None:
    clock = [datetime(2026, 12, 6, 22, 30).timestamp()]  # a Sunday evening, local time
    calls = Calls(clock)
    stop = asyncio.Event()

    async def pause(_stop, seconds: float) -> bool:
        clock[0] += seconds
        if clock[0] >= datetime(2026, 12, 9, 12, 0).timestamp():
            stop.set()
        return not stop.is_set()

    calls.fail_next = True  # Monday's run fails once (the broker away): tried again 5 minutes later
    service = DigestService(SETTINGS, calls, calls, clock=lambda: clock[0], pause=pause)
    await service.loop(stop)
    assert calls.digests == [
        (datetime(2026, 12, 7, 7, 0), MONDAY),
        (datetime(2026, 12, 7, 7, 5), MONDAY),  # the retry still counts as Monday's run (weekly users)
        (datetime(2026, 12, 8, 7, 0), TUESDAY),
        (datetime(2026, 12, 9, 7, 0), date(2026, 12, 9)),
    ]
    assert calls.cleanups[0] == datetime(2026, 12, 6, 22, 30)  # at start, then hourly
    assert all((b - a).total_seconds() == 3600 for a, b in zip(calls.cleanups, calls.cleanups[1:]))
    assert len(calls.cleanups) == 62


async def test_a_blob_stays_for_an_hour_after_a_release_of_it(world, cleanup) -> None:
    blobs, view, _, _ = world
    run, _ = cleanup
    held = _hold(blobs, view, [LENA, ANNA])
    lena = entry_id(held.id, LENA)
    view.state.apply_event(QuarantineAction(message_id=held.message_id, entry=lena, recipient=LENA, action="release",
                                            by="portal:lena", released_as=held.message_id,
                                            time=iso_from_epoch(AFTER_EXPIRY - 60)))  # its copy may be in a stage
    stats = await run.run(now=AFTER_EXPIRY)
    assert stats.expired == [entry_id(held.id, ANNA)] and (stats.blobs_deleted, stats.blobs_kept) == (0, 1)
    assert (await run.run(now=AFTER_EXPIRY + 3600)).blobs_deleted == 1


# ---- retention of the other blobs ----------------------------------------------------------------

DAY = 86_400.0


async def test_blobs_past_retention_go_unless_an_entry_or_a_deferred_delivery_needs_them(world, cleanup) -> None:
    blobs, view, _, _ = world
    _, ledger = cleanup
    now = time.time()
    held = _hold(blobs, view, [LENA], raw=b"Subject: held\r\n\r\nheld\r\n", time=iso_from_epoch(now - 10 * DAY))
    delivered, young = blobs.put(b"Subject: delivered\r\n\r\nx\r\n"), blobs.put(b"Subject: young\r\n\r\ny\r\n")
    retried = blobs.put(b"Subject: retried\r\n\r\nz\r\n")
    message = Received(message_id=new_id(), envelope=Envelope(mail_from="a@b.test", rcpt_to=[ANNA]),
                       client=Client(ip="192.0.2.1", port=1), blob=retried)
    routed = Routed(message_id=message.message_id, destination="lmtp", recipients=[ANNA], message=message)
    waiting = Deferred(message_id=message.message_id, destination="lmtp", recipient=ANNA, attempt=9,
                       reply=Reply(code=452, text="mailbox full"), routed=routed)
    await ledger._log.write("ledger", ledger_key(message.message_id, ANNA, "lmtp"), encode_event(waiting))
    for ref in (held.message.blob, delivered, retried):
        os.utime(blobs.path_of(ref.sha256), (now - 31 * DAY, now - 31 * DAY))
    leftover = blobs.path_of(young.sha256).parent / f".{young.sha256}.1.2.tmp"
    leftover.write_bytes(b"half")
    os.utime(leftover, (now - 2 * DAY, now - 2 * DAY))

    kept_all = Cleanup(view.state, QuarantineActions(SETTINGS, view, None, blobs), ledger, blobs, retention=None)
    assert (await kept_all.run(now=now)).blobs_aged_out == 0 and blobs.get(delivered)

    run = Cleanup(view.state, QuarantineActions(SETTINGS, view, None, blobs), ledger, blobs, retention=30 * DAY)
    stats = await run.run(now=now)
    assert (stats.blobs_aged_out, stats.temporaries_removed, stats.expired) == (1, 1, [])
    with pytest.raises(BlobNotFound):
        blobs.get(delivered)
    assert blobs.get(held.message.blob) and blobs.get(retried) and blobs.get(young)  # an entry, a retry, young
    assert not leftover.exists()
    assert (await run.run(now=now)).blobs_aged_out == 0  # again: nothing more
