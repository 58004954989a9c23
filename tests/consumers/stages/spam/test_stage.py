"""The spam stage's `process`: per-recipient actions from each recipient's settings, the outcome and its
edits, allow lists that need an authenticated sender, and what happens while the settings are missing.

The stage runs on a real blob store and the shipped rules; its per-user settings are a `UserSettings`
on the memory transport (the Kafka one swapped out), fed the same records `poststelle user set` writes.
"""
from __future__ import annotations

import asyncio
import dataclasses

import pytest

from consumers.stages.spam.model import LEARN, BayesModel
from consumers.stages.spam.stage import SpamStage, authenticated_senders
from pipeline.blobstore import FileBlobStore
from pipeline.config import load_settings
from pipeline.stage import StageContext, TemporaryFailure, Work
from pipeline.state.users import TABLE, UserSettings
from pipeline.tables import MemoryLog, MemoryTransport
from schemas.events import (
    Client,
    Envelope,
    Received,
    Result,
    UserPrefValues,
    UserSettingsChanged,
    Verdict,
    decode_event,
    encode_event,
)
from schemas.ids import new_id

LENA, ANNA, OUTSIDE = "lena.mueller@school.test", "anna.schmidt@school.test", "friend@ext.test"
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
SPAM = ("From: Prize Office <winner@prizes.example>\r\nTo: lena.mueller@school.test\r\n"
        "Subject: EARN MONEY FROM HOME TODAY\r\nDate: Thu, 03 Dec 2026 10:00:00 +0000\r\n"
        "Message-ID: <1@prizes.example>\r\n\r\nWork from home and earn $5,000 a week! You have been pre-approved.\r\n"
        "This is not spam.\r\nStart here: http://192.0.2.55/offer\r\n")


async def _stage(tmp_path, **own: dict) -> tuple[SpamStage, FileBlobStore]:
    settings = load_settings(None, environ={"POSTSTELLE_TOPOLOGY__STAGES": "spam,route",
                                            "POSTSTELLE_STAGES__SPAM__BAYES__ENABLED": "false",
                                            "POSTSTELLE_INGRESS__LOCAL_DOMAINS": '["school.test"]'})
    blobs = FileBlobStore(tmp_path / "blobs")
    stage = SpamStage(settings.stage_settings("spam"), StageContext(settings=settings, blobs=blobs))
    stage.users = UserSettings(None, settings.users)  # the memory transport instead of Kafka
    for address, values in own.items():
        event = UserSettingsChanged(address=address, settings=UserPrefValues(**values), changed=sorted(values),
                                    by="cli:test")
        stage.users.apply(TABLE, address, encode_event(event))
    await stage.users.start()
    return stage, blobs


def _work(blobs: FileBlobStore, raw: str, rcpt: list[str], history: list[Result] = (),
          mail_from: str = "winner@prizes.example") -> Work:
    return Work(message=Received(message_id=new_id(), envelope=Envelope(mail_from=mail_from, rcpt_to=rcpt),
                                 client=Client(ip="192.0.2.7", port=40000, helo="mail.prizes.example"),
                                 blob=blobs.put(raw.encode())), history=list(history))


def _auth(dmarc: str, from_domain: str = "prizes.example") -> Result:
    return Result(stage="auth", verdict=Verdict.PASS, details={
        "spf": {"result": "none", "domain": ""}, "dkim": [],
        "dmarc": {"result": dmarc, "from_domain": from_domain}})


async def test_gtube_refuses_every_recipient_naming_the_rule(tmp_path) -> None:
    stage, blobs = await _stage(tmp_path)
    outcome = await stage.process(_work(blobs, SPAM.replace("Work from home", GTUBE), [LENA, ANNA]))
    assert set(outcome.rejected) == {LENA, ANNA}
    assert outcome.rejected[LENA].startswith("spam: GTUBE") and outcome.verdict == Verdict.FAIL
    assert outcome.details["score"] >= 1000


async def test_one_copy_held_one_tagged_one_leaving_the_site_untouched(tmp_path) -> None:
    stage, blobs = await _stage(tmp_path, **{LENA: {"quarantine": True}})
    outcome = await stage.process(_work(blobs, SPAM, [LENA, ANNA, OUTSIDE]))
    actions = {a["recipient"]: a["action"] for a in outcome.details["actions"]}
    assert actions == {LENA: "quarantine", ANNA: "tag_certain", OUTSIDE: "none"}
    assert list(outcome.quarantined) == [LENA] and not outcome.rejected
    tags = [e for e in outcome.edits if e.kind == "subject_tag"]
    assert [(e.value, e.recipients) for e in tags] == [("{SPAM!}", [ANNA])]
    assert {e.name for e in outcome.edits if e.kind == "add_header" and not e.recipients} == {
        "X-Spam-Score", "X-Spam-Status"}


async def test_an_allow_list_needs_an_authenticated_sender_and_a_block_list_refuses(tmp_path) -> None:
    stage, blobs = await _stage(tmp_path, **{ANNA: {"allow_senders": ("@prizes.example",)},
                                             LENA: {"block_senders": ("winner@prizes.example",)}})
    forged = await stage.process(_work(blobs, SPAM, [ANNA], [_auth("fail")]))
    assert forged.details["actions"][0]["action"] == "tag_certain"
    passed = await stage.process(_work(blobs, SPAM, [ANNA, LENA], [_auth("pass")]))
    actions = {a["recipient"]: a["action"] for a in passed.details["actions"]}
    assert actions == {ANNA: "allowed", LENA: "blocked"}
    assert "block list" in passed.rejected[LENA] and not any(e.kind == "subject_tag" for e in passed.edits)


async def test_without_the_users_settings_the_message_waits(tmp_path) -> None:
    stage, blobs = await _stage(tmp_path)
    stage.users = UserSettings(None, stage.users.users)  # not started: not replayed yet
    with pytest.raises(TemporaryFailure, match="per-user settings"):
        await stage.process(_work(blobs, SPAM, [ANNA]))
    outside = await stage.process(_work(blobs, SPAM, [OUTSIDE]))  # no local recipient: no settings needed
    assert outside.details["actions"][0]["action"] == "none"


@pytest.mark.parametrize("details, logged_in, expected", [
    ({}, True, {"winner@prizes.example", "boss@prizes.example"}),
    ({}, False, set()),
    ({"spf": {"result": "pass"}}, False, {"winner@prizes.example"}),  # SPF vouches for the envelope sender only
    ({"dmarc": {"result": "pass", "from_domain": "prizes.example"}}, False,
     {"winner@prizes.example", "boss@prizes.example"}),
    ({"dkim": [{"result": "pass", "domain": "prizes.example"}]}, False,
     {"winner@prizes.example", "boss@prizes.example"}),
    ({"dkim": [{"result": "pass", "domain": "mail.prizes.example"}]}, False, set()),  # a child does not vouch
    ({"dkim": [{"result": "fail", "domain": "prizes.example"}]}, False, set()),
])
def test_which_senders_count_as_authenticated(details, logged_in, expected) -> None:
    auth = Result(stage="auth", verdict=Verdict.PASS, details=details) if details else None
    senders = ("winner@prizes.example", "Boss@Prizes.example")
    assert authenticated_senders(senders, "winner@prizes.example", auth, logged_in) == frozenset(expected)


async def test_autolearn_writes_learn_events_for_clear_cases_only(tmp_path) -> None:
    settings = load_settings(None, environ={"POSTSTELLE_TOPOLOGY__STAGES": "spam,route",
                                            "POSTSTELLE_STAGES__SPAM__BAYES__AUTOLEARN__ENABLED": "true",
                                            "POSTSTELLE_INGRESS__LOCAL_DOMAINS": '["school.test"]'})
    blobs = FileBlobStore(tmp_path / "blobs")
    stage = SpamStage(settings.stage_settings("spam"), StageContext(settings=settings, blobs=blobs))
    log = MemoryLog([LEARN])
    stage.model = stage.scorer.model = BayesModel(settings.stage_settings("spam").bayes, MemoryTransport(log))
    stage.users = UserSettings(None, settings.users)
    await stage.start()
    try:
        heavy = SPAM.replace("This is not spam.", "This is not spam. To be removed from our mailing list, reply "
                             "with REMOVE in the subject. Make millions of dollars, 100% guaranteed, no risk.")
        ham = ("From: Anna Schmidt <anna.schmidt@school.test>\r\nTo: lena.mueller@school.test\r\nSubject: Mensa\r\n"
               "Date: Thu, 03 Dec 2026 10:00:00 +0000\r\nMessage-ID: <2@school.test>\r\n\r\nBis morgen in der Mensa.\r\n")
        results = [await stage.process(_work(blobs, raw, [LENA])) for raw in (heavy, ham, SPAM)]
        for _ in range(200):  # the model folds what it wrote from the log, as every instance does
            if (stage.model.nspam, stage.model.nham) == (1, 1):
                break
            await asyncio.sleep(0.01)
        results.append(await stage.process(_work(blobs, heavy, [LENA])))
        assert [r.details["autolearned"] for r in results] == ["spam", "ham", "", ""]  # the last: already learned
        learned = [decode_event(value) for _, value in log.records[LEARN]]
        assert [(e.label, e.source) for e in learned] == [("spam", "autolearn"), ("ham", "autolearn")]
    finally:
        await stage.close()


@pytest.mark.parametrize("listener", ["digest", "dsn", "notice"])
async def test_mail_the_gateway_writes_itself_is_scored_but_never_held_tagged_or_refused(tmp_path, listener) -> None:
    stage, blobs = await _stage(tmp_path, **{LENA: {"quarantine": True}})
    work = _work(blobs, SPAM.replace("Work from home", GTUBE), [LENA, ANNA], mail_from="")
    work = Work(message=dataclasses.replace(work.message, listener=listener))  # a digest quoting a spam
    outcome = await stage.process(work)
    assert outcome.details["score"] >= 1000  # scored as it is ...
    assert not outcome.rejected and not outcome.quarantined and outcome.verdict == Verdict.PASS  # ... and let through
    assert {a["action"] for a in outcome.details["actions"]} == {"none"}
    assert all("written by the gateway" in a["why"] for a in outcome.details["actions"])
    assert not any(e.kind == "subject_tag" or e.name == "X-Spam-Flag" and e.kind == "add_header"
                   for e in outcome.edits)
    smtp = await stage.process(_work(blobs, SPAM.replace("Work from home", GTUBE), [LENA]))  # the same from outside
    assert smtp.details["score"] == outcome.details["score"] and set(smtp.rejected) == {LENA}
