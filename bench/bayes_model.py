"""The Bayes model: learn rate, classification time, accuracy alone, and memory for 100,000 messages.

    .venv/bin/python bench/bayes_model.py [--corpus /tmp/sa-corpus] [--messages 100000]

On the SpamAssassin public corpus (bench/spam_corpus.py: deduplicated, the fixed 50/50 split):

1. **learn**: the training half through `poststelle spam learn`'s own code (`pipeline.cli.spam.train`:
   parse, tokenize, hash, the learn event, handed to a log; a memory log here, so the figure is the
   command's CPU cost without the broker), messages per second;
2. **fold**: a model replaying those events (what a stage instance does at start without a snapshot);
3. **classify**: CPU time per message of the test half for what Bayes adds to a scan: tokenize,
   hash, look up, combine (the parse is shared with the rules and timed apart);
4. **accuracy of Bayes alone** on the test half at probabilities 0.5 / 0.9 / 0.99 (the stage's
   BAYES_* bands turn it into rule scores; rules plus Bayes are measured by bench/spam_accuracy.py);
5. **hostile messages**: tokenizing messages made to be expensive (long lines, 250,000 distinct
   words, a 2 MB word, 2 MB of ``<a <a``, 1,000 text parts): bounded by the `[message]` caps,
   `PART_CHARS` per part and `MAX_TOKENS`;
6. **memory**: `--messages` learn events (default 100,000) folded into a model with the default cap.
   The corpus has 6,000 messages, so the events are made from it: each takes the token set of a
   corpus message, keeps a share of it and replaces the rest with new random hashes, that share
   being what the corpus shows at its end (the share of a message's tokens never seen in the
   messages before it). Vocabulary growth slows as a corpus grows (Heaps' law), so this overstates
   the distinct tokens of 100,000 real messages: the memory figure is an upper bound.
   The events are folded in a fresh process that holds nothing else. Printed: the fold's rate (a
   replay without snapshot), how many tokens the table holds and how many touches it refused, the
   table's fixed size, the digest map, that process's resident memory before and after, the
   snapshot's size and the time of a start from it.
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.spam_corpus import corpus_dir, load, split  # noqa: E402
from consumers.stages.spam.bayes import BayesSettings  # noqa: E402
from consumers.stages.spam.model import LEARN, BayesModel, learned_event  # noqa: E402
from consumers.stages.spam.tokens import TokenizerOptions, token_hashes, tokenize  # noqa: E402
from pipeline.cli.spam import Progress, train  # noqa: E402
from pipeline.mail.message import parse_message  # noqa: E402
from pipeline.mail.sources import MailItem  # noqa: E402
from pipeline.tables import MemoryLog, MemoryTransport  # noqa: E402
from schemas.events import encode_event  # noqa: E402


def rss_mib() -> float:
    """The process's resident memory now (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


async def learn(samples, settings: BayesSettings) -> tuple[MemoryLog, float]:
    memory = MemoryLog([LEARN])
    model = BayesModel(settings, MemoryTransport(memory))
    await model.start()
    started = time.process_time()
    for label in ("spam", "ham"):
        items = [MailItem(str(s.path), raw=s.raw, size=len(s.raw)) for s in samples if s.label == label]
        await train(model, items, label, TokenizerOptions(), Progress(0, enabled=False))
    return memory, time.process_time() - started


def fold(memory: MemoryLog, settings: BayesSettings) -> tuple[BayesModel, float]:
    model = BayesModel(settings)
    started = time.process_time()
    for key, value in memory.records[LEARN]:
        model.apply(LEARN, key, value)
    return model, time.process_time() - started


def classify_all(model: BayesModel, samples) -> tuple[list[tuple[str, float | None]], float, float]:
    parse_time = bayes_time = 0.0
    results = []
    for sample in samples:
        started = time.process_time()
        parsed = parse_message(sample.raw)
        middle = time.process_time()
        probability = model.probability(token_hashes(tokenize(parsed)))
        ended = time.process_time()
        parse_time += middle - started
        bayes_time += ended - middle
        results.append((sample.label, probability))
    return results, 1000 * parse_time / len(samples), 1000 * bayes_time / len(samples)


def report_accuracy(results: list[tuple[str, float | None]]) -> None:
    spam = np.array([p if p is not None else 0.5 for label, p in results if label == "spam"])
    ham = np.array([p if p is not None else 0.5 for label, p in results if label == "ham"])
    print(f"  test half: {len(spam)} spam, {len(ham)} ham; no vote: {sum(p is None for _, p in results)}")
    for threshold in (0.5, 0.9, 0.99):
        print(f"  at p >= {threshold}: detection {100 * np.mean(spam >= threshold):.1f} %, "
              f"false positives {100 * np.mean(ham >= threshold):.2f} % ({int(np.sum(ham >= threshold))})")


def fresh_share(samples, hashes: dict[str, np.ndarray], tail: int = 1000) -> float:
    """Of the last `tail` messages (in the corpus's sha256 order), the share of tokens not seen before."""
    seen: set[int] = set()
    new = total = 0
    ordered = sorted(samples, key=lambda s: s.sha256)
    for index, sample in enumerate(ordered):
        tokens = hashes[sample.sha256].tolist()
        if index >= len(ordered) - tail:
            new += sum(t not in seen for t in tokens)
            total += len(tokens)
        seen.update(tokens)
    return new / total


def synthetic(samples, hashes, count: int, share: float, seed: int = 1):
    """`count` learn records: corpus token sets with `share` of their tokens replaced by new hashes."""
    rng = np.random.default_rng(seed)
    for n in range(count):
        sample = samples[rng.integers(len(samples))]
        base = hashes[sample.sha256]
        keep = base[rng.random(len(base)) >= share]
        fresh = rng.integers(1, 2**63, size=len(base) - len(keep), dtype=np.int64).astype(np.uint64) | np.uint64(1 << 63)
        message = np.unique(np.concatenate([keep, fresh]))
        event = learned_event(message, sample.label)
        yield event.digest, encode_event(event)


def fold_file(path: str, max_tokens: int) -> dict:
    """In a fresh process: fold the records of `path` into a model, with nothing else in memory."""
    import gc

    before = rss_mib()
    model = BayesModel(BayesSettings(max_tokens=max_tokens))
    folded = 0.0
    with open(path, "rb") as stream:
        while header := stream.read(8):
            key_size, value_size = int.from_bytes(header[:4], "little"), int.from_bytes(header[4:], "little")
            key, value = stream.read(key_size).decode(), stream.read(value_size)
            started = time.process_time()
            model.apply(LEARN, key, value)
            folded += time.process_time() - started
    gc.collect()
    stats = model.stats()
    return {"rss_before": before, "rss_after": rss_mib(), "folded": folded, "stats": stats,
            "digest_map": sys.getsizeof(model.labels) + sum(sys.getsizeof(k) for k in model.labels)}


async def memory_figures(samples, hashes, count: int, share: float, settings: BayesSettings) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "records"
        with path.open("wb") as out:
            for key, value in synthetic(samples, hashes, count, share):
                out.write(len(key).to_bytes(4, "little") + len(value).to_bytes(4, "little") + key.encode() + value)
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            found = pool.apply(fold_file, (str(path), settings.max_tokens))
        stats = found["stats"]
        print(f"  {count} learn events ({stats.nspam} spam, {stats.nham} ham), fresh-token share {share:.3f}")
        print(f"  fold: {found['folded']:.1f} s CPU ({count / found['folded']:.0f} events/s)")
        print(f"  tokens: {stats.tokens} held of {stats.capacity} ({100 * stats.tokens / stats.capacity:.1f} %), "
              f"{stats.refused} refused touches past the cap")
        print(f"  token table (fixed): {stats.memory_bytes / 2**20:.1f} MiB; digest map: "
              f"{found['digest_map'] / 2**20:.1f} MiB")
        print(f"  resident memory of a process holding only the model: {found['rss_after']:.0f} MiB "
              f"({found['rss_before']:.0f} MiB before the model: Python, NumPy and the imports)")
        model = BayesModel(settings, MemoryTransport(MemoryLog([LEARN])), topic="bench",
                           snapshot_dir=Path(directory), write_snapshots=False)
        await model.start()
        with path.open("rb") as stream:
            while header := stream.read(8):
                key = stream.read(int.from_bytes(header[:4], "little")).decode()
                model.apply(LEARN, key, stream.read(int.from_bytes(header[4:], "little")))
        snapshot = await model.snapshot()
        await model.close()
        reloaded = BayesModel(settings, MemoryTransport(MemoryLog([LEARN])), topic="bench",
                              snapshot_dir=Path(directory), write_snapshots=False)
        started = time.perf_counter()
        await reloaded.start()
        loaded = time.perf_counter() - started
        assert (reloaded.nspam, reloaded.nham) == (stats.nspam, stats.nham)
        print(f"  snapshot: {snapshot.stat().st_size / 2**20:.1f} MiB, a start from it took {1000 * loaded:.0f} ms")
        await reloaded.close()


def hostile() -> None:
    """Tokenizing messages made to be expensive: bounded by the [message] caps and MAX_TOKENS."""
    head = b"From: a@b.example\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
    cases = {
        "2 MB of one line of words": head + b"\r\n" + b"wort " * 400_000,
        "2 MB of distinct words": head + b"\r\n" + b" ".join(b"w%07d" % i for i in range(250_000)),
        "2 MB without a space": head + b"\r\n" + b"x" * 2_000_000,
        "<a <a <a ... (2 MB of HTML)": head + b"Content-Type: text/html\r\n\r\n" + b"<a " * 700_000,
        "1,000 text parts": head + b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"".join(
            b"--b\r\nContent-Type: text/plain\r\n\r\n" + b"gleich gleich gleich " * 100 + b"\r\n"
            for _ in range(1000)) + b"--b--\r\n",
    }
    for name, raw in cases.items():
        parsed = parse_message(raw)
        started = time.process_time()
        tokens = tokenize(parsed)
        token_hashes(tokens)
        print(f"  {name}: {1000 * (time.process_time() - started):.0f} ms for {len(tokens)} tokens")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus")
    parser.add_argument("--messages", type=int, default=100_000)
    args = parser.parse_args()
    samples = load(corpus_dir(args.corpus))
    training, test = split(samples)
    settings = BayesSettings()
    print(f"corpus: {len(samples)} messages after deduplication; training half {len(training)}, test half {len(test)}")

    memory, learn_time = asyncio.run(learn(training, settings))
    print(f"learn (poststelle spam learn's code, memory log): {len(training) / learn_time:.0f} messages/s per core")
    model, fold_time = fold(memory, settings)
    print(f"fold (a stage replaying the topic): {len(memory.records[LEARN]) / fold_time:.0f} events/s per core; "
          f"{model.nspam} spam, {model.nham} ham, {model.table.held()} tokens")
    results, parse_ms, bayes_ms = classify_all(model, test)
    print(f"classify: {bayes_ms:.3f} CPU-ms per message for Bayes (tokenize, hash, look up, combine); "
          f"the shared parse {parse_ms:.3f} ms")
    print("accuracy of Bayes alone (default settings, min_learned 200):")
    report_accuracy(results)

    print("hostile messages (tokenize and hash; the parse not counted):")
    hostile()

    hashes = {s.sha256: token_hashes(tokenize(parse_message(s.raw))) for s in samples}
    share = fresh_share(samples, hashes)
    print(f"memory ({args.messages} messages, default cap {settings.max_tokens} tokens):")
    asyncio.run(memory_figures(samples, hashes, args.messages, share, settings))


if __name__ == "__main__":
    main()
