"""The expand stage against the real slapd with the demo school, its outcome applied as the runner does."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from consumers.stages.expand import ExpandSettings, ExpandStage
from pipeline.blobstore import FileBlobStore
from pipeline.config import load_settings
from pipeline.metrics import sample
from pipeline.mail.render import envelope_sender_of, render
from pipeline.recipients import apply_outcome, copies
from pipeline.settings import ConfigError
from pipeline.stage import Outcome, StageContext, TemporaryFailure, Work
from schemas.events import BlobRef, Client, Edit, Envelope, Received, Routed
from schemas.ids import new_id
from tests.pipeline.clients.test_directory import ANNA, LENA, MAX, TOM
from tests.servers import SlapdServer

SENDER = "vater@example.org"


def _stage(home: Path, slapd: SlapdServer, **expand: str) -> ExpandStage:
    env = {"POSTSTELLE_HOME": str(home), "POSTSTELLE_TOPOLOGY__STAGES": "expand,route",
           "POSTSTELLE_LDAP__PORT": str(slapd.port), "POSTSTELLE_LDAP__TIMEOUT": "1"}
    env.update({f"POSTSTELLE_STAGES__EXPAND__{k.upper()}": v for k, v in expand.items()})
    settings = load_settings(None, environ=env)
    return ExpandStage(settings.stage_settings("expand"), StageContext(settings=settings, blobs=FileBlobStore(home)))


def _work(*rcpt: str, mail_from: str = SENDER) -> Work:
    return Work(message=Received(message_id=new_id(), envelope=Envelope(mail_from=mail_from, rcpt_to=list(rcpt)),
                                 client=Client(ip="192.0.2.7", port=40000, helo="mail.example.org"),
                                 blob=BlobRef(sha256="0" * 64, size=0)))


async def _process(stage: ExpandStage, work: Work) -> Outcome:
    await stage.start()
    try:
        return await stage.process(work)
    finally:
        await stage.close()


async def test_groups_and_aliases_are_replaced_people_once(tmp_path, slapd) -> None:
    work = _work("9a@school.test", "schach@school.test", "Sekretariat@school.test", TOM, "postmaster@school.test",
                 "friend@example.org")
    outcome = await _process(_stage(tmp_path, slapd), work)
    replaced = {r.recipient: sorted(r.into) for r in outcome.replace}
    assert replaced == {"9a@school.test": [LENA, MAX], "schach@school.test": [LENA, TOM],
                        "Sekretariat@school.test": [ANNA]}
    assert outcome.rejected == {} and outcome.edits == []  # bounces_to defaults to the sender
    fan = apply_outcome(work, outcome, "expand")
    # lena is in 9a and schach, tom in schach and addressed himself: one copy each
    assert sorted(fan.remaining) == sorted([MAX, LENA, TOM, ANNA, "postmaster@school.test", "friend@example.org"])
    groups = {g["group"]: g for g in outcome.details["groups"]}
    assert sorted(groups["schach@school.test"]["loops"]) == ["schach-team@school.test -> schach@school.test",
                                                             "schach@school.test -> schach@school.test"]
    assert outcome.details["aliases"] == {"Sekretariat@school.test": ANNA}


async def test_disabled_and_mailboxless_members_are_recorded(tmp_path, slapd) -> None:
    outcome = await _process(_stage(tmp_path, slapd), _work("informatik-ag@school.test", "verwaltung@school.test"))
    groups = {g["group"]: g for g in outcome.details["groups"]}
    assert groups["informatik-ag@school.test"]["disabled"] == ["old.student@school.test"]
    assert groups["verwaltung@school.test"]["no_mailbox"] == ["uid=hausmeister,ou=people,dc=school,dc=test"]
    assert {r.recipient: r.into for r in outcome.replace}["verwaltung@school.test"] == [ANNA]


async def test_a_disabled_person_is_rejected(tmp_path, slapd) -> None:
    outcome = await _process(_stage(tmp_path, slapd), _work("old.student@school.test", MAX))
    assert outcome.rejected == {"old.student@school.test": "mailbox disabled, the account is no longer active"}
    assert outcome.replace == []


async def test_bounces_to_the_owner_for_the_members_copies(tmp_path, slapd) -> None:
    work = _work("9a@school.test", MAX, "schach@school.test")  # max also in his own right; schach has no owner
    outcome = await _process(_stage(tmp_path, slapd, bounces_to="owner"), work)
    assert outcome.edits == [Edit(stage="expand", kind="envelope_sender", value=ANNA, recipients=[LENA])]
    fan = apply_outcome(work, outcome, "expand")
    by_copy = {tuple(sorted(rcpts)): edits for rcpts, edits in copies(fan.remaining, fan.edits)}
    assert set(by_copy) == {(LENA,), (MAX, TOM)}
    routed = Routed(message_id=work.message.message_id, destination="lmtp", recipients=[LENA],
                    message=work.message, edits=by_copy[(LENA,)])
    assert envelope_sender_of(routed) == ANNA
    assert envelope_sender_of(dataclasses.replace(routed, edits=[])) == SENDER
    assert render(b"Subject: x\r\n\r\nHallo\r\n", by_copy[(LENA,)]) == b"Subject: x\r\n\r\nHallo\r\n"


async def test_a_bounce_to_a_group_keeps_the_null_sender(tmp_path, slapd) -> None:
    outcome = await _process(_stage(tmp_path, slapd, bounces_to="owner"), _work("9a@school.test", mail_from=""))
    assert [r.recipient for r in outcome.replace] == ["9a@school.test"] and outcome.edits == []


async def test_over_the_limit_waits_or_is_refused(tmp_path, slapd) -> None:
    hits = sample("poststelle_expand_limit_total", {"action": "tempfail"})
    with pytest.raises(TemporaryFailure, match="group jahrgang9@school.test: more than max_members 2.*waiting for a"):
        await _process(_stage(tmp_path, slapd, max_members="2"), _work("jahrgang9@school.test", MAX))
    assert sample("poststelle_expand_limit_total", {"action": "tempfail"}) == hits + 1
    outcome = await _process(_stage(tmp_path, slapd, max_depth="1", on_limit="reject"),
                             _work("jahrgang9@school.test", MAX))
    assert list(outcome.rejected) == ["jahrgang9@school.test"]
    assert "nested deeper than max_depth 1" in outcome.rejected["jahrgang9@school.test"]


async def test_the_directory_down_is_a_temporary_failure(tmp_path, own_slapd) -> None:
    stage = _stage(tmp_path, own_slapd)
    own_slapd.stop()
    with pytest.raises(TemporaryFailure, match="directory"):
        await _process(stage, _work("9a@school.test"))


@pytest.mark.parametrize(("key", "value"), [("max_members", 0), ("max_depth", 0), ("on_limit", "truncate"),
                                            ("bounces_to", "nobody")])
def test_bad_settings_are_refused(key, value) -> None:
    with pytest.raises(ConfigError, match=f"stages.expand.{key}"):
        ExpandSettings(**{key: value})
