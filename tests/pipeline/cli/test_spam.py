"""`poststelle spam learn|forget`: what is written, what counts as known, moved, unreadable (memory log)."""
from __future__ import annotations

import orjson
import pytest

from consumers.stages.spam.bayes import BayesSettings
from consumers.stages.spam.model import LEARN, BayesModel
from consumers.stages.spam.tokens import TokenizerOptions
from pipeline.cli.spam import Progress, _summary, train
from pipeline.mail.sources import MailItem
from pipeline.tables import MemoryLog, MemoryTransport


def message(n: int) -> MailItem:
    raw = (f"From: sender{n}@example.org\r\nSubject: Angebot {n}\r\nMessage-ID: <{n}@example.org>\r\n\r\n"
           f"Nachricht Nummer {n} mit Inhalt wort{n}\r\n").encode()
    return MailItem(f"m{n}.eml", raw=raw, size=len(raw))


@pytest.fixture
async def log_and_model():
    memory = MemoryLog([LEARN])
    model = BayesModel(BayesSettings(min_learned=1), MemoryTransport(memory), retry_every=0.01)
    await model.start(timeout=5)
    yield memory, model
    await model.close()


async def learn(model, items, label):
    return await train(model, items, label, TokenizerOptions(), Progress(0, enabled=False))


def written(memory: MemoryLog) -> list[tuple[str, str]]:
    return [(orjson.loads(value)["label"], orjson.loads(value)["source"]) for _, value in memory.records[LEARN]]


async def settle(model: BayesModel, memory: MemoryLog) -> None:
    await model.transport.catch_up(model.apply)


async def test_learn_writes_one_event_per_new_message(log_and_model):
    memory, model = log_and_model
    bad = MailItem("x.bin", raw=b"\x00\x01\x02 not a message", size=9)
    tally = await learn(model, [message(1), message(2), message(1), bad, MailItem("gone", error="no such file")],
                        "spam")
    assert (tally.written, tally.known, tally.unreadable, tally.messages) == (2, 1, 2, 5)
    assert written(memory) == [("spam", "cli"), ("spam", "cli")]
    assert tally.errors == ["x.bin: no header fields: not a message", "gone: no such file"]
    assert _summary("spam", tally) == "learned 2 as spam, 1 already known, 2 unreadable (5 messages read)"


async def test_learning_again_is_known_and_the_other_class_moves(log_and_model):
    memory, model = log_and_model
    await learn(model, [message(1), message(2)], "spam")
    await settle(model, memory)
    again = await learn(model, [message(1), message(2)], "spam")
    assert (again.written, again.known) == (0, 2)
    moved = await learn(model, [message(1), message(3)], "ham")
    assert (moved.written, moved.moved, moved.known) == (2, 1, 0)
    await settle(model, memory)
    assert (model.nspam, model.nham) == (1, 2)
    assert _summary("ham", moved) == "learned 2 as ham (1 moved from spam), 0 already known, 0 unreadable (2 messages read)"


async def test_forget_writes_only_for_learned_messages(log_and_model):
    memory, model = log_and_model
    await learn(model, [message(1)], "ham")
    await settle(model, memory)
    tally = await learn(model, [message(1), message(2)], "forget")
    assert (tally.written, tally.known) == (1, 1)
    await settle(model, memory)
    assert (model.nspam, model.nham) == (0, 0)
    assert written(memory)[-1] == ("forget", "cli")
    assert _summary("forget", tally) == "forgot 1, 1 not learned, 0 unreadable (2 messages read)"


# ---- spam check (rules only: no broker) -----------------------------------------------------------

GTUBE_MAIL = (b"From: Prize Office <winner@prizes.example>\r\nSubject: test\r\nDate: Thu, 03 Dec 2026 10:00:00 +0000\r\n"
              b"Message-ID: <1@prizes.example>\r\n\r\nXJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n")


def test_spam_check_scores_files_with_the_stages_rules(tmp_path, monkeypatch, capsys) -> None:
    from pipeline.cli import main

    monkeypatch.setenv("POSTSTELLE_CONFIG", "")
    mbox = tmp_path / "two.mbox"
    mbox.write_bytes(b"From x Thu Dec  3 10:00:00 2026\n" + GTUBE_MAIL.replace(b"\r\n", b"\n") +
                     b"\nFrom x Thu Dec  3 10:00:00 2026\nFrom: Anna Schmidt <a@school.test>\nTo: max@school.test\nSubject: Mensa\n"
                     b"Date: Thu, 03 Dec 2026 10:00:00 +0000\nMessage-ID: <2@school.test>\n\nBis morgen.\n")
    assert main(["spam", "check", "--rules-only", "--json", str(mbox), str(tmp_path / "missing.eml")]) == 1
    out, err = capsys.readouterr()
    reports = [orjson.loads(line) for line in out.splitlines()]
    assert [(r["action"], r["rules"][0]["name"] if r["rules"] else "") for r in reports] == [("reject", "GTUBE"),
                                                                                          ("none", "")]
    assert "missing.eml: no such file or directory" in err


def test_spam_check_refuses_a_broken_site_rule_file(tmp_path, monkeypatch, capsys) -> None:
    from pipeline.cli import main

    rules = tmp_path / "site.cf"
    rules.write_text("body OK /x/\nscore OK 1\nfrobnicate OK 2\n")
    monkeypatch.setenv("POSTSTELLE_CONFIG", "")
    monkeypatch.setenv("POSTSTELLE_STAGES__SPAM__RULE_FILES", str(rules))
    monkeypatch.setenv("POSTSTELLE_TOPOLOGY__STAGES", "spam,route")
    monkeypatch.setenv("POSTSTELLE_TOPOLOGY__CHAINS", "[]")
    mail = tmp_path / "m.eml"
    mail.write_bytes(GTUBE_MAIL)
    assert main(["spam", "check", "--rules-only", str(mail)]) == 2
    assert f"{rules}:3:" in capsys.readouterr().err
