"""The Bayes model as a fold of learn events: relearn, forget, dedup, order, compaction, snapshots, the cap."""
from __future__ import annotations

import asyncio
import random

import numpy as np
import orjson
import pytest

from consumers.stages.spam.bayes import BayesSettings
from consumers.stages.spam.counts import SLOTS, TokenTable
from consumers.stages.spam.model import LEARN, BayesModel, learned_event
from consumers.stages.spam.tokens import TOKENIZER_VERSION, token_digest, unpack_tokens
from pipeline.tables import MemoryLog, MemoryTransport
from schemas.events import SpamLearned, encode_event

SETTINGS = BayesSettings(min_learned=1, max_tokens=4096)


def token_set(rng: np.random.Generator, size: int = 60, vocabulary: int = 3000) -> np.ndarray:
    """A message's hashes: drawn from a shared vocabulary (so messages share tokens), spread over 64 bits."""
    words = rng.choice(vocabulary, size=size, replace=False).astype(np.uint64)
    return np.unique(words * np.uint64(0x9E3779B97F4A7C15) + np.uint64(1))


def record(hashes: np.ndarray, label: str) -> tuple[str, bytes]:
    event = learned_event(hashes, label)
    return event.digest, encode_event(event)


def canonical(model: BayesModel) -> tuple:
    """The model's content, independent of which slot of its bucket a token took."""
    order = np.argsort(model.table.keys, axis=1)
    keys = np.take_along_axis(model.table.keys, order, axis=1)
    counts = np.take_along_axis(model.table.counts, order[:, :, None], axis=1)
    return keys.tobytes(), counts.tobytes(), sorted(model.labels.items()), model.nspam, model.nham


def folded(records, settings: BayesSettings = SETTINGS) -> BayesModel:
    model = BayesModel(settings)
    for key, value in records:
        model.apply(LEARN, key, value)
    return model


def counts(model: BayesModel, hashes: np.ndarray) -> tuple[list[int], list[int]]:
    spam, ham = model.table.lookup(hashes)
    return spam.tolist(), ham.tolist()


def test_learn_counts_each_token_once_per_message():
    rng = np.random.default_rng(1)
    a, b = token_set(rng), token_set(rng)
    model = folded([record(a, "spam"), record(b, "spam")])
    assert (model.nspam, model.nham) == (2, 0)
    shared = np.intersect1d(a, b)
    assert counts(model, shared) == ([2] * len(shared), [0] * len(shared))
    assert model.label_of(token_digest(a)) == "spam"


def test_the_same_message_twice_in_a_class_counts_once():
    a = token_set(np.random.default_rng(2))
    once, twice = folded([record(a, "ham")]), folded([record(a, "ham"), record(a, "ham")])
    assert canonical(once) == canonical(twice)
    assert (twice.nspam, twice.nham) == (0, 1)


def test_relearning_in_the_other_class_moves_the_counts():
    a = token_set(np.random.default_rng(3))
    model = folded([record(a, "spam"), record(a, "ham")])
    assert (model.nspam, model.nham) == (0, 1)
    assert counts(model, a) == ([0] * len(a), [1] * len(a))
    assert canonical(model) == canonical(folded([record(a, "ham")]))
    assert model.label_of(token_digest(a)) == "ham"


def test_forget_removes_and_forgetting_the_unknown_changes_nothing_learned():
    rng = np.random.default_rng(4)
    a, b = token_set(rng), token_set(rng)
    model = folded([record(a, "spam"), record(b, "ham"), record(a, "forget")])
    assert (model.nspam, model.nham) == (0, 1)
    assert model.label_of(token_digest(a)) is None
    assert counts(model, np.setdiff1d(a, b)) == ([0] * len(np.setdiff1d(a, b)),) * 2
    # compaction keeps only the latest record per digest: the same model
    assert canonical(model) == canonical(folded([record(b, "ham"), record(a, "forget")]))


def test_order_of_different_messages_does_not_matter():
    rng = np.random.default_rng(5)
    records = [record(token_set(rng), random.Random(i).choice(["spam", "ham"])) for i in range(200)]
    # some relearned: the records of one digest keep their order (one partition), the others interleave
    later = [record(unpack_tokens(orjson.loads(value)["tokens"]), "ham") for _, value in records[:40]]
    first = folded(records + later)
    for seed in range(3):
        mixed = records[:]
        random.Random(seed).shuffle(mixed)
        for relearned in later:  # somewhere after the first record of its digest
            after = next(i for i, r in enumerate(mixed) if r[0] == relearned[0])
            mixed.insert(random.Random(seed).randint(after + 1, len(mixed)), relearned)
        assert canonical(first) == canonical(folded(mixed))


def test_a_record_whose_tokens_do_not_give_its_digest_is_refused():
    rng = np.random.default_rng(6)
    a, b = token_set(rng), token_set(rng)
    good = learned_event(a, "spam")
    forged = SpamLearned(digest=good.digest, label="ham", tokens=learned_event(b, "ham").tokens,
                         tokenizer_version=TOKENIZER_VERSION)
    model = folded([(good.digest, encode_event(good)), (good.digest, encode_event(forged)),
                    ("other-key", encode_event(good)), (good.digest, None), (good.digest, b"{not json")])
    assert model.invalid == 4
    assert (model.nspam, model.nham) == (1, 0)
    old = SpamLearned(digest=good.digest, label="ham", tokens=good.tokens, tokenizer_version=TOKENIZER_VERSION + 1)
    model.apply(LEARN, good.digest, encode_event(old))
    assert model.other_version == 1 and (model.nspam, model.nham) == (1, 0)


def spread(words: np.ndarray) -> np.ndarray:
    return np.unique(words.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(1))


def test_probability_from_the_counts():
    rng = np.random.default_rng(7)
    spam_words, ham_words = np.arange(0, 500), np.arange(500, 1000)
    model = BayesModel(BayesSettings(min_learned=20))
    for i in range(20):
        for words, label in ((spam_words, "spam"), (ham_words, "ham")):
            message = spread(np.append(rng.choice(words, 40, replace=False), 10_000 + i))
            model.fold(token_digest(message), label, message)
    assert model.probability(spread(rng.choice(spam_words, 30, replace=False))) > 0.99
    assert model.probability(spread(rng.choice(ham_words, 30, replace=False))) < 0.01
    assert model.probability(spread(np.array([12345]))) is None  # nothing known
    result = model.classify(spread(np.array([1, 2, 600, 12345])))
    assert (result.tokens, result.known) == (4, 3)
    assert BayesModel(BayesSettings(min_learned=21)).probability(spread(spam_words[:10])) is None


# ---- the cap ----------------------------------------------------------------------------------------


def test_table_size_is_fixed_by_the_capacity():
    table = TokenTable(5000)
    assert table.buckets == 1024 and table.capacity == 1024 * SLOTS  # 625 buckets rounded up to a power of two
    assert table.nbytes == table.capacity * 16
    assert TokenTable(2_097_152).nbytes == 32 * 2**20


def test_past_the_cap_the_smallest_hashes_stay_whatever_the_order():
    rng = np.random.default_rng(8)
    settings = BayesSettings(min_learned=1, max_tokens=1024)  # 128 buckets of 8: far too small on purpose
    messages = [(token_set(rng, 80, vocabulary=20_000), random.Random(i).choice(["spam", "ham"])) for i in range(150)]
    records = [record(h, label) for h, label in messages]
    forward, backward = folded(records, settings), folded(list(reversed(records)), settings)
    assert canonical(forward) == canonical(backward)
    assert forward.table.held() == forward.table.capacity and forward.table.refused > 0
    # every bucket holds the smallest hashes that were ever touched in it
    touched = np.unique(np.concatenate([h for h, _ in messages]))
    for bucket in range(forward.table.buckets):
        mine = touched[(touched & forward.table.mask) == bucket]
        assert np.array_equal(np.sort(forward.table.keys[bucket]), np.sort(mine)[:SLOTS])
    # counts of the tokens kept are exact
    kept = forward.table.keys[forward.table.keys != 0]
    exact = {int(k): [0, 0] for k in kept}
    for h, label in messages:
        for k in np.intersect1d(h, kept).tolist():
            exact[k][0 if label == "spam" else 1] += 1
    spam, ham = forward.table.lookup(kept)
    assert [list(x) for x in zip(spam.tolist(), ham.tolist())] == [exact[int(k)] for k in kept]


def test_forgetting_past_the_cap_agrees_with_the_compacted_log():
    rng = np.random.default_rng(9)
    settings = BayesSettings(min_learned=1, max_tokens=1024)
    messages = [token_set(rng, 80, vocabulary=20_000) for _ in range(100)]
    learn = [record(h, "spam") for h in messages]
    forget = [record(h, "forget") for h in messages[:30]]
    relearn = [record(h, "ham") for h in messages[30:50]]
    full = folded(learn + forget + relearn, settings)
    latest = {key: value for key, value in learn + forget + relearn}  # what compaction keeps
    compacted = folded(list(latest.items()), settings)
    assert canonical(full) == canonical(compacted)
    assert (full.nspam, full.nham) == (50, 20)


# ---- following the log, snapshots -------------------------------------------------------------------


async def test_snapshot_and_replay_equal_a_full_replay(tmp_path):
    rng = np.random.default_rng(10)
    memory = MemoryLog([LEARN])
    records = [record(token_set(rng), "spam" if i % 3 else "ham") for i in range(120)]
    memory.records[LEARN].extend(records[:80])
    first = BayesModel(SETTINGS, MemoryTransport(memory), topic="t.spam.learn", snapshot_dir=tmp_path, retry_every=0.01)
    assert await first.start(timeout=5)
    assert await first.snapshot() == tmp_path / "bayes-t.spam.learn.npz"
    await first.close()
    memory.records[LEARN].extend(records[80:] + [record(np.frombuffer(bytes.fromhex(records[0][0][:16]),
                                                                      np.uint64) | np.uint64(1), "ham")])
    resumed = BayesModel(SETTINGS, MemoryTransport(memory), topic="t.spam.learn", snapshot_dir=tmp_path,
                         retry_every=0.01)
    replayed = BayesModel(SETTINGS, MemoryTransport(memory), topic="t.spam.learn", retry_every=0.01)
    applied = []
    original = resumed.apply
    resumed.apply = lambda *args: (applied.append(args[1]), original(*args))  # type: ignore[method-assign]
    assert await resumed.start(timeout=5) and await replayed.start(timeout=5)
    try:
        assert len(applied) == len(records) - 80 + 1  # only what followed the snapshot
        assert canonical(resumed) == canonical(replayed)
        assert resumed.stats().last_learned == replayed.stats().last_learned != ""
        # both keep following
        extra = record(token_set(rng), "spam")
        memory.records[LEARN].append(extra)
        for model in (resumed, replayed):
            for _ in range(200):
                if model.label_of(extra[0]) == "spam":
                    break
                await asyncio.sleep(0.01)
        assert canonical(resumed) == canonical(replayed)
    finally:
        await resumed.close()
        await replayed.close()


async def test_a_snapshot_past_the_end_of_the_log_is_dropped(tmp_path):
    rng = np.random.default_rng(11)
    memory = MemoryLog([LEARN])
    memory.records[LEARN].extend(record(token_set(rng), "spam") for _ in range(30))
    model = BayesModel(SETTINGS, MemoryTransport(memory), topic="t", snapshot_dir=tmp_path, retry_every=0.01)
    await model.start(timeout=5)
    await model.snapshot()
    await model.close()
    recreated = MemoryLog([LEARN])  # the topic was deleted and made anew: 5 other records
    recreated.records[LEARN].extend(record(token_set(rng), "ham") for _ in range(5))
    again = BayesModel(SETTINGS, MemoryTransport(recreated), topic="t", snapshot_dir=tmp_path, retry_every=0.01)
    await again.start(timeout=5)
    try:
        assert (again.nspam, again.nham) == (0, 5)
        assert canonical(again) == canonical(folded(recreated.records[LEARN]))
    finally:
        await again.close()


async def test_a_snapshot_of_another_table_size_is_ignored(tmp_path):
    rng = np.random.default_rng(12)
    memory = MemoryLog([LEARN])
    memory.records[LEARN].extend(record(token_set(rng), "spam") for _ in range(10))
    small = BayesModel(BayesSettings(max_tokens=2048), MemoryTransport(memory), topic="t", snapshot_dir=tmp_path)
    await small.start(timeout=5)
    await small.close()  # writes its last snapshot
    assert (tmp_path / "bayes-t.npz").exists()
    large = BayesModel(SETTINGS, MemoryTransport(memory), topic="t", snapshot_dir=tmp_path)
    await large.start(timeout=5)
    try:
        assert large.nspam == 10 and canonical(large) == canonical(folded(memory.records[LEARN]))
    finally:
        await large.close()


@pytest.mark.parametrize("label", ["spam", "ham"])
async def test_a_model_without_a_log_answers_at_once(label):
    model = BayesModel(SETTINGS)
    assert await model.start(timeout=0.1)
    a = token_set(np.random.default_rng(13))
    model.fold(token_digest(a), label, a)
    assert model.stats().nspam == (label == "spam")
    await model.close()
