"""The spam rules: CPU per message for `RuleSet.evaluate` with the shipped rule set, ordinary and hostile mail.

    .venv/bin/python bench/spam_rules.py [--messages 1000] [--seed 1] [--repeat 3] [--corpus DIR ...]

The rules only: each message is parsed first (`parse_message`, the stage's shared view, timed apart)
and then `RuleSet.evaluate` is timed with `time.process_time()`, so the figure is what the rules add
to a stage that already has the parsed message.

Ordinary mail: the blocklist benchmark's generated messages (`bench/stage_blocklist.make_message`,
4-50 KiB, multipart/alternative text + HTML, 3-30 links); with `--corpus`, also every file under
the given directories (e.g. the SpamAssassin public corpus; a leading mbox "From " line is kept, as
the files have it). Hostile mail: the messages of `tests/consumers/stages/spam/test_hostile.HOSTILE`
(the parser's hostile set plus megabytes of one line, regex-bomb texts, 5,000 links, 10,000
recipients, broken charsets), each evaluated `--repeat` times, the best time printed.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.stage_blocklist import make_message  # noqa: E402
from consumers.stages.spam.rules import RuleSet, shipped_rule_files  # noqa: E402
from pipeline.mail.message import parse_message  # noqa: E402
from tests.consumers.stages.spam.scanning import context  # noqa: E402
from tests.consumers.stages.spam.test_hostile import HOSTILE  # noqa: E402


def timed(function, *args) -> tuple[float, object]:
    started = time.process_time()
    value = function(*args)
    return (time.process_time() - started) * 1000, value


def summary(name: str, times: list[float]) -> str:
    ordered = sorted(times)
    return (f"  {name:16s} mean {statistics.fmean(times):6.3f} ms, p50 {ordered[len(ordered) // 2]:6.3f} ms, "
            f"p99 {ordered[int(len(ordered) * 0.99)]:6.3f} ms, max {ordered[-1]:7.3f} ms")


def measure(rules: RuleSet, label: str, corpus: list[bytes]) -> None:
    parse_times, rule_times, hits = [], [], 0
    for raw in corpus:
        parse_ms, _ = timed(parse_message, raw)
        ctx = context(raw)
        rules_ms, found = timed(rules.evaluate, ctx)
        parse_times.append(parse_ms)
        rule_times.append(rules_ms)
        hits += len(found)
    size = sum(map(len, corpus)) / len(corpus) / 1024
    print(f"{label}: {len(corpus)} messages, {size:.1f} KiB average, {hits / len(corpus):.1f} rules hit per message")
    print(summary("parse_message", parse_times))
    print(summary("RuleSet.evaluate", rule_times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--corpus", type=Path, nargs="*", default=[])
    args = parser.parse_args()
    load_ms, rules = timed(RuleSet.load, shipped_rule_files())
    print(f"shipped rule set: {len(rules)} rules that count, loaded and compiled in {load_ms:.0f} ms CPU")
    rng = random.Random(args.seed)
    pool = [f"www.site{i}.test" for i in range(args.messages // 2)] + ["good.test", "ext.test"]
    measure(rules, "generated", [make_message(rng, i, pool) for i in range(args.messages)])
    for directory in args.corpus:
        files = sorted(p for p in directory.rglob("*") if p.is_file())
        measure(rules, str(directory), [p.read_bytes() for p in files])
    print(f"hostile (RuleSet.evaluate, best of {args.repeat}):")
    for name, raw in HOSTILE.items():
        ctx = context(raw)
        best = min(timed(rules.evaluate, ctx)[0] for _ in range(args.repeat))
        print(f"  {name:40s} {len(raw):>10,d} bytes {best:8.1f} ms")


if __name__ == "__main__":
    main()
