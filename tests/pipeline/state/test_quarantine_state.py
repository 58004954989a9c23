"""The quarantine as state (pipeline/state/quarantine.py) and acting on it (quarantine_actions.py).

The actions write through a stand-in for aiokafka's transactional producer that records each
committed transaction; the state is the real fold, fed the events the broker would return.
"""
from __future__ import annotations

import asyncio
import hashlib

import pytest

from pipeline.blobstore import FileBlobStore
from pipeline.mail.mime import leaf_at, walk
from pipeline.producers import TransactionalProducer
from pipeline.settings import KafkaSettings, Settings, TopologySettings
from pipeline.state.quarantine import QuarantineView, entry_id
from pipeline.state.quarantine_actions import ActionRefused, QuarantineActions
from pipeline.tables import MemoryLog, MemoryTransport
from schemas.events import (
    Client,
    DigestSent,
    Edit,
    Envelope,
    HeaderSummary,
    Held,
    Quarantined,
    Received,
    Result,
    StageResult,
    decode_event,
)
from tests.pipeline.state.test_quarantine import RAW

SETTINGS = Settings(topology=TopologySettings(stages=["virus", "attachment", "spam", "route"]),
                    kafka=KafkaSettings(request_timeout_ms=200))


class Recorder:
    """Stands in for AIOKafkaProducer: every committed transaction's (topic, key, value) records."""

    def __init__(self) -> None:
        self.committed: list[list[tuple[str, bytes, bytes]]] = []
        self._open: list[tuple[str, bytes, bytes]] = []
        self.client = None

    async def start(self) -> None: ...
    async def stop(self) -> None: ...

    async def begin_transaction(self) -> None:
        self._open = []

    async def send(self, topic, value, key=None, headers=None):
        self._open.append((topic, key, value))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def commit_transaction(self) -> None:
        self.committed.append(self._open)


def _message(blobs: FileBlobStore, message_id: str, rcpts: list[str]) -> Received:
    return Received(message_id=message_id, envelope=Envelope(mail_from="Eve@Spam.test", rcpt_to=rcpts),
                    client=Client(ip="192.0.2.1", port=1), blob=blobs.put(RAW),
                    headers=HeaderSummary(subject="cheap pills", header_from="eve@spam.test"))


@pytest.fixture
async def setup(tmp_path):
    blobs = FileBlobStore(tmp_path)
    view = QuarantineView(SETTINGS, "test", transport=MemoryTransport(MemoryLog(["quarantine"])))
    await view.start(1)
    recorder = Recorder()
    producer = TransactionalProducer(SETTINGS.kafka, "t", make=lambda *_: recorder)
    actions = QuarantineActions(SETTINGS, view, producer, blobs)
    yield blobs, view, actions, recorder
    await view.close()


def _spam(blobs, rcpts=("lena@school.test", "max@school.test")) -> Quarantined:
    message = _message(blobs, "m1", list(rcpts))
    return Quarantined(message_id="m1", stage="spam", reason="spam: X (score 9, probability 90%)",
                       recipients=list(rcpts), message=message,
                       results=[Result(stage="virus", verdict="pass"), Result(stage="spam", verdict="fail", score=9.0)],
                       edits=[Edit(stage="spam", kind="add_header", name="X-Spam-Score", value="9"),
                              Edit(stage="spam", kind="add_header", name="X-Other", value="1",
                                   recipients=["someone@school.test"])])


async def test_one_entry_per_recipient_and_a_release_reinjects_after_the_stage(setup):
    blobs, view, actions, recorder = setup
    event = _spam(blobs)
    view.state.apply_event(event)
    lena = entry_id(event.id, "lena@school.test")
    assert {e.recipient for e in view.state.entries.values()} == {"lena@school.test", "max@school.test"}
    entry = view.state.entries[lena]
    assert (entry.category, entry.score, entry.subject, entry.needs_approval) == ("spam", 9.0, "cheap pills", False)

    action = await actions.release(lena, "portal:lena@school.test")
    [transaction] = recorder.committed
    topics = [t for t, _, _ in transaction]
    assert topics == ["poststelle.checked.spam", "poststelle.quarantine"]
    copy = decode_event(transaction[0][2])
    assert isinstance(copy, StageResult) and copy.recipients == ["lena@school.test"]
    assert copy.message_id == "m1" and copy.result.stage == "spam" and [r.stage for r in copy.history] == ["virus"]
    assert [e.name for e in copy.edits] == ["X-Spam-Score"]  # only the edits for lena travel on
    assert view.state.entries[lena].status == "released" and action.released_as == "m1"
    assert view.state.entries[entry_id(event.id, "max@school.test")].open  # max's copy is still held

    with pytest.raises(ActionRefused, match="released already"):  # the double click
        await actions.release(lena, "portal:lena@school.test")
    assert len(recorder.committed) == 1
    view.state.apply_event(action)  # the follower reads the action back: applied once
    assert len(view.state.entries[lena].actions) == 1


async def test_two_clicks_at_once_release_once(setup):
    blobs, view, actions, recorder = setup
    event = _spam(blobs)
    view.state.apply_event(event)
    lena = entry_id(event.id, "lena@school.test")
    results = await asyncio.gather(*(actions.release(lena, "link:lena@school.test") for _ in range(2)),
                                   return_exceptions=True)
    assert sum(isinstance(r, ActionRefused) for r in results) == 1
    assert len(recorder.committed) == 1


async def test_a_held_part_needs_an_admin_and_comes_back_under_its_own_id(setup):
    blobs, view, actions, recorder = setup
    message = _message(blobs, "m2", ["max@school.test"])
    sha = hashlib.sha256(leaf_at(walk(RAW), "2").body(RAW)).hexdigest()
    held = Held(message_id="m2", stage="attachment", part="2", sha256=sha, filename="a.exe",
                content_type="application/octet-stream", reasons=["blocked_extension: .exe"],
                recipients=["max@school.test"], message=message, results=[Result(stage="virus", verdict="pass")])
    view.state.apply_event(held)
    key = entry_id(held.id, "max@school.test")
    with pytest.raises(ActionRefused, match="administrator"):
        await actions.release(key, "portal:max@school.test")
    await actions.request_release(key, "portal:max@school.test")
    assert view.state.entries[key].status == "requested"
    with pytest.raises(ActionRefused, match="requested already"):
        await actions.request_release(key, "portal:max@school.test")
    action = await actions.approve(key, "admin:admin@school.test")
    assert action.action == "approve" and view.state.entries[key].status == "released"
    copy = decode_event(recorder.committed[-1][0][2])
    assert recorder.committed[-1][0][0] == "poststelle.checked.attachment"
    assert copy.message_id == action.released_as != "m2" and copy.message.message_id == copy.message_id
    assert copy.edits == [] and copy.message.blob == message.blob  # the original, the part restored


async def test_delete_deny_expire_and_the_digest_fold(setup):
    blobs, view, actions, recorder = setup
    event = _spam(blobs)
    view.state.apply_event(event)
    lena, max_ = entry_id(event.id, "lena@school.test"), entry_id(event.id, "max@school.test")
    assert [e.id for e in view.state.undigested("LENA@school.test")] == [lena]
    view.state.apply_event(DigestSent(user="lena@school.test", entries=[lena]))
    assert view.state.undigested("lena@school.test") == []
    await actions.delete(lena, "portal:lena@school.test")
    with pytest.raises(ActionRefused, match="deleted already"):
        await actions.release(lena, "portal:lena@school.test")
    with pytest.raises(ActionRefused, match="nobody asked"):
        await actions.deny(max_, "admin:admin@school.test")
    assert view.state.expired(now=0) == []
    assert [e.id for e in view.state.expired(now=4e9)] == [max_]
    await actions.expire(max_)
    assert view.state.entries[max_].status == "expired" and not view.state.search(status="open")
    with pytest.raises(ActionRefused, match="no such message"):
        await actions.release("0" * 20, "portal:lena@school.test")


async def test_a_stage_gone_from_the_topology_is_refused(setup):
    blobs, view, actions, recorder = setup
    event = Quarantined(message_id="m3", stage="oldstage", reason="x", recipients=["lena@school.test"],
                        message=_message(blobs, "m3", ["lena@school.test"]))
    view.state.apply_event(event)
    with pytest.raises(ActionRefused, match="no longer in the pipeline"):
        await actions.release(entry_id(event.id, "lena@school.test"), "cli:root@host")
    assert recorder.committed == []


def test_categories_and_search(tmp_path):
    from pipeline.state.quarantine import QuarantineState
    blobs = FileBlobStore(tmp_path)
    state = QuarantineState(lifetime=86_400, approval=["virus", "dmarc"])
    message = _message(blobs, "m4", ["lena@school.test"])
    for stage, reason in (("virus", "scan limit"), ("auth", "dmarc quarantine"),
                          ("blocklist", "late rejection: blocklist"), ("spam", "spam: X")):
        state.apply_event(Quarantined(message_id="m4", stage=stage, reason=reason, recipients=["lena@school.test"],
                                      message=message))
    assert sorted(e.category for e in state.entries.values()) == ["dmarc", "rejected", "spam", "virus"]
    assert {e.category for e in state.entries.values() if e.needs_approval} == {"virus", "dmarc"}
    assert [e.category for e in state.search(text="late")] == ["rejected"]
    assert len(state.search(recipient="LENA@school.test", status="open")) == 4


async def test_release_with_allow_and_learn_writes_all_in_one_transaction(setup):
    from pipeline.state.users import UserSettings
    from schemas.events import SpamLearned, UserSettingsChanged
    blobs, view, _, recorder = setup
    users = UserSettings(None, SETTINGS.users)
    await users.start(1)
    learned_from = []

    def learn(raw: bytes, message_id: str) -> SpamLearned:
        learned_from.append((raw, message_id))
        return SpamLearned(message_id=message_id, digest="ab" * 32, label="ham", tokens="", tokenizer_version=1)

    producer = TransactionalProducer(SETTINGS.kafka, "t2", make=lambda *_: recorder)
    actions = QuarantineActions(SETTINGS, view, producer, blobs, users=users, learn_ham=learn)
    event = _spam(blobs)
    view.state.apply_event(event)
    action = await actions.release(entry_id(event.id, "lena@school.test"), "link:lena@school.test",
                                   learn_ham=True, allow_sender=True, token="t1")
    assert action.learn_ham and action.allow_sender and action.token == "t1"
    [transaction] = recorder.committed
    assert [t for t, _, _ in transaction] == ["poststelle.checked.spam", "poststelle.quarantine",
                                              "poststelle.spam.learn", "poststelle.users"]
    assert learned_from == [(RAW, "m1")]
    change = decode_event(transaction[3][2])
    assert isinstance(change, UserSettingsChanged) and change.settings.allow_senders == ["eve@spam.test"]
    assert (await users.prefs("lena@school.test")).allows("eve@spam.test")  # known at once, locally
