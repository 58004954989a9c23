"""How the scores of the BAYES_* rules were chosen: two-fold cross-validation inside the training half.

    .venv/bin/python bench/spam_bayes_scores.py [--corpus /tmp/sa-corpus] [--max-fp 0.4]

The test half (bench/spam_corpus.py) is never read. The training half is split again by the second
hex digit of the SHA-256 (0-7 / 8-f); Bayes is trained on one fold and scores the other, both ways,
with the shipped rules giving the rest of the score (BAYES_* left out). Then, over a grid of band
scores (monotonic: a higher band never scores less), it prints the candidates that keep false
positives at 5 points (the 50 % tag) under `--max-fp` % with the best detection. The chosen scores
go into deploy/spam/rules/60_bayes.cf by hand; bench/spam_accuracy.py then scores the test half once.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.spam_corpus import corpus_dir, load, split  # noqa: E402
from bench.spam_fit_scores import collect  # noqa: E402
from consumers.stages.spam.rules import RuleSet  # noqa: E402
from consumers.stages.spam.scorer import rule_paths  # noqa: E402
from consumers.stages.spam.settings import SpamSettings  # noqa: E402

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus")
    parser.add_argument("--max-fp", type=float, default=0.4, help="false positives allowed at 5 points, in %")
    args = parser.parse_args()
    training, _ = split(load(corpus_dir(args.corpus)))
    settings = SpamSettings()
    # the score without BAYES_*, and the band of BAYES_00 ... BAYES_99 and BAYES_999 (index 9)
    rows = [("spam" if spam else "ham", rest, b + top)
            for _, spam, _, rest, b, top in collect(training, settings, RuleSet.load(rule_paths(settings)))]
    nspam = sum(label == "spam" for label, _, _ in rows)
    nham = len(rows) - nspam
    low = {"00": (-5.0, -4.0, -3.5, -3.0, -2.0), "05": (-2.0, -1.0, -0.5)}
    high = {"80": (1.5, 2.0, 3.0), "95": (2.0, 3.0, 4.0), "99": (3.0, 4.0, 5.0), "999": (0.5, 1.0, 2.0)}
    found = []
    for s00, s05, s80, s95, s99, s999 in itertools.product(low["00"], low["05"], high["80"], high["95"], high["99"],
                                                           high["999"]):
        if not s80 <= s95 <= s99:
            continue
        scores = (s00, s05, 0.0, 0.0, 0.8, 1.2, s80, s95, s99, s99 + s999)
        caught = sum(label == "spam" and rest + scores[b] >= 5 for label, rest, b in rows)
        wrong = sum(label == "ham" and rest + scores[b] >= 5 for label, rest, b in rows)
        found.append((100 * caught / nspam, 100 * wrong / nham, (s00, s05, s80, s95, s99, s999)))
    allowed = sorted((f for f in found if f[1] <= args.max_fp), key=lambda f: (-f[0], f[1]))
    print(f"fewest false positives of the grid: {min(f[1] for f in found):.2f} %")
    print(f"training half, two folds: {nspam} spam, {nham} ham scored by a model trained on the other fold")
    print("detection %, false positives %, (BAYES_00, BAYES_05, BAYES_80, BAYES_95, BAYES_99, BAYES_999)")
    for detection, fp, scores in allowed[:10]:
        print(f"  {detection:5.1f}  {fp:4.2f}  {scores}")


if __name__ == "__main__":
    main()
