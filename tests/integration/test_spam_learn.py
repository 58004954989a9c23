"""`poststelle spam learn|forget|stats` against the real Kafka, and models in separate processes that agree.

Messages are made here from two vocabularies (spam offers, school mail), each a little different;
ham goes in as a maildir, spam as an mbox, as an operator would feed them.
"""
from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from consumers.stages.spam.bayes import BayesSettings
from consumers.stages.spam.model import BayesModel, kafka_transport
from consumers.stages.spam.tokens import token_digest, token_hashes, tokenize
from pipeline.blobstore import FileBlobStore
from pipeline.bus import Topics
from pipeline.cli.components import load_config
from pipeline.mail.message import parse_message
from schemas.events import BlobRef
from tests.integration.conftest import REPO, Stack, make_message, new_test_id, send

pytestmark = pytest.mark.integration

SPAM_WORDS = ("gewinn casino bonus gratis angebot sofort klicken rabatt lotterie kredit schnell million "
              "exklusiv jetzt sichern prozent garantiert").split()
HAM_WORDS = ("elternabend klassenfahrt zeugnis stundenplan mensa sporttag hausaufgaben vertretung termin "
             "anmeldung ausflug bibliothek schulhof projektwoche konferenz").split()
MIN_LEARNED = 3
MAX = "max.mustermann@school.test"


def made(kind: str, n: int, seed: int) -> bytes:
    rng = random.Random(f"{kind}-{n}-{seed}")
    words = SPAM_WORDS if kind == "spam" else HAM_WORDS
    sender = "promo@angebote.example" if kind == "spam" else "sekretariat@school.test"
    body = " ".join(rng.choice(words) for _ in range(40))
    return (f"From: {sender}\nTo: {MAX}\nSubject: {' '.join(rng.sample(words, 3))}\n"
            f"Message-ID: <{kind}.{n}.{seed}@example.org>\n\n{body}\n").encode()


def maildir(root: Path, messages: list[bytes]) -> Path:
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    for i, raw in enumerate(messages):
        (root / "cur" / f"{i}.host:2,S").write_bytes(raw)
    return root


def mbox(path: Path, messages: list[bytes]) -> Path:
    path.write_bytes(b"".join(b"From promo@angebote.example Mon Nov 24 09:00:00 2025\n" + raw + b"\n"
                              for raw in messages))
    return path


def stats(stack: Stack) -> dict:
    return orjson.loads(stack.cli("spam", "stats", "--json").stdout)


def probes(stack: Stack, files: list[Path], count: int = 2) -> list[dict]:
    """`count` models, each a process of its own, started together."""
    running = [subprocess.Popen([sys.executable, "-m", "tests.integration.bayes_probe", str(MIN_LEARNED),
                                 *map(str, files)], cwd=REPO, env=stack.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(count)]
    results = []
    for process in running:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        results.append(orjson.loads(out))
    return results


def checked(stack: Stack, files: list[Path]) -> list[dict]:
    """`poststelle spam check --json` in a process of its own, its model voting from MIN_LEARNED on."""
    env = {**stack.env, "POSTSTELLE_STAGES__SPAM__BAYES__MIN_LEARNED": str(MIN_LEARNED)}
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "spam", "check", "--json", *map(str, files)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [orjson.loads(line) for line in done.stdout.splitlines()]


def test_learned_events_give_the_same_model_in_separate_processes(stack: Stack, tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)  # the topic outlives one test run: new messages every run
    before = stats(stack)
    hams = maildir(tmp_path / "Maildir", [made("ham", n, seed) for n in range(4)])
    spams = mbox(tmp_path / "spam.mbox", [made("spam", n, seed) for n in range(4)])
    learned = stack.cli("spam", "learn", "--ham", str(hams))
    assert "learned 4 as ham, 0 already known, 0 unreadable (4 messages read)" in learned.stdout
    learned = stack.cli("spam", "learn", "--spam", str(spams), str(tmp_path / "missing.eml"), check=False)
    assert learned.returncode == 0
    assert "learned 4 as spam, 0 already known, 1 unreadable (5 messages read)" in learned.stdout
    assert "missing.eml: no such file or directory" in learned.stderr
    after = stats(stack)
    assert (after["nspam"] - before["nspam"], after["nham"] - before["nham"]) == (4, 4)

    new_spam, new_ham = tmp_path / "new-spam.eml", tmp_path / "new-ham.eml"
    new_spam.write_bytes(made("spam", 99, seed))
    new_ham.write_bytes(made("ham", 99, seed))
    first, second = probes(stack, [new_spam, new_ham])
    assert first["pid"] != second["pid"]
    assert (first["nspam"], first["nham"]) == (second["nspam"], second["nham"]) == (after["nspam"], after["nham"])
    assert first["probabilities"] == second["probabilities"]  # bit for bit
    spam_p, ham_p = first["probabilities"]
    assert spam_p > 0.9 and ham_p < 0.1

    # the stage's own scorer (`poststelle spam check` runs it) in two more processes: the same Bayes vote
    checks = checked(stack, [new_spam, new_ham]), checked(stack, [new_spam, new_ham])
    assert checks[0] == checks[1]
    assert [report["bayes"] for report in checks[0]] == pytest.approx([spam_p, ham_p], abs=0.05)
    assert any(rule["name"].startswith(("BAYES_9", "BAYES_80")) for rule in checks[0][0]["rules"])
    assert any(rule["name"] in ("BAYES_00", "BAYES_05") for rule in checks[0][1]["rules"])


def test_learning_twice_is_known_moving_and_forgetting(stack: Stack, tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    files = []
    for n in range(3):
        files.append(tmp_path / f"{n}.eml")
        files[-1].write_bytes(made("spam", n, seed))
    start = stats(stack)
    stack.cli("spam", "learn", "--spam", *map(str, files))
    again = stack.cli("spam", "learn", "--spam", *map(str, files))
    assert "learned 0 as spam, 3 already known" in again.stdout
    moved = stack.cli("spam", "learn", "--ham", str(files[0]))
    assert "learned 1 as ham (1 moved from spam), 0 already known" in moved.stdout
    forgot = stack.cli("spam", "forget", *map(str, files), str(tmp_path / "0.eml"))
    assert "forgot 3, 1 not learned, 0 unreadable (4 messages read)" in forgot.stdout
    end = stats(stack)
    assert (end["nspam"], end["nham"]) == (start["nspam"], start["nham"])
    text = stack.cli("spam", "stats").stdout
    assert "learned:" in text and "tokens:" in text and "model age:" in text


def test_the_delivered_copy_is_the_message_the_stage_scanned(stack: Stack) -> None:
    """The stored blob (what the stage tokenizes) and the copy in the mailbox (what a user gives to
    `spam learn`: Dovecot's and the sinks' header fields on top) have the same digest."""
    test_id = new_test_id()
    send(make_message(test_id, to=MAX, subject="Klassenfahrt nach Berlin", body="Bitte bis Freitag anmelden.\r\n"),
         [MAX])
    delivered = stack.wait_for(lambda: next((raw for raw in stack.messages(MAX) if test_id.encode() in raw), None),
                               timeout=60, what="the delivery")
    rows = stack.wait_for(lambda: stack.sql(f"SELECT payload FROM poststelle.events WHERE type = 'received' "
                                            f"AND position(payload, '{test_id}') > 0"), what="the received event")
    blob = orjson.loads(rows[0][0])["blob"]
    stored = FileBlobStore(stack.home / "blobs").get(BlobRef(**blob))  # (in a segment of the ingress)
    assert b"Delivered-To:" in delivered and b"Delivered-To:" not in stored
    digests = {token_digest(token_hashes(tokenize(parse_message(raw)))) for raw in (stored, delivered)}
    assert len(digests) == 1


async def test_a_snapshot_resumes_on_the_real_broker(stack: Stack, tmp_path: Path) -> None:
    """KafkaTransport opened at a snapshot's positions: only the records after it are read, and the
    model equals one replayed from the beginning."""
    settings = load_config(environ=stack.env)
    topic = Topics.from_settings(settings).spam_learn
    seed = random.randrange(1 << 30)
    files = [tmp_path / f"{n}.eml" for n in range(3)]
    for n, path in enumerate(files):
        path.write_bytes(made("ham", n, seed))
    stack.cli("spam", "learn", "--ham", *map(str, files[:2]))

    def model(directory: Path | None) -> BayesModel:
        return BayesModel(BayesSettings(min_learned=1), kafka_transport(settings, client_id=f"snap-{new_test_id()}"),
                          topic=topic, snapshot_dir=directory)

    first = model(tmp_path / "snap")
    assert await first.start(timeout=60)
    assert await first.snapshot() is not None
    await first.close()
    stack.cli("spam", "learn", "--ham", str(files[2]))
    stack.cli("spam", "learn", "--spam", str(files[0]))  # moved

    resumed, replayed = model(tmp_path / "snap"), model(None)
    applied = []
    fold = resumed.apply
    resumed.apply = lambda table, key, value: (applied.append(key), fold(table, key, value))  # type: ignore[method-assign]
    try:
        assert await resumed.start(timeout=60) and await replayed.start(timeout=60)
        assert len(applied) == 2  # the two records written after the snapshot
        assert (resumed.nspam, resumed.nham) == (replayed.nspam, replayed.nham)
        hashes = token_hashes(tokenize(parse_message(files[1].read_bytes())))
        assert resumed.classify(hashes) == replayed.classify(hashes)
        assert resumed.label_of(token_digest(token_hashes(tokenize(parse_message(files[0].read_bytes()))))) == "spam"
    finally:
        await resumed.close()
        await replayed.close()
