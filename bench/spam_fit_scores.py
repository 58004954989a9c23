"""How the shipped rule scores were set: a fit on the training half, as SpamAssassin's perceptron does.

    .venv/bin/python bench/spam_fit_scores.py [--corpus /tmp/sa-corpus] [--write]

The test half (bench/spam_corpus.py) is never read. On the training half:

1. every message is scored by the shipped rules (which fired, not their scores), and by a Bayes model
   trained on the *other* fold of the training half (folds by the second hex digit of the SHA-256),
   so the Bayes probability of a message never comes from a model that learned it;
2. each message counts twice: once without Bayes (a site that has not trained yet) and once with its
   band (`BAYES_00` … `BAYES_999`); a logistic regression (L2, ham weighted more than spam, since a
   false positive costs more) fits one weight per rule that fired on the corpus and per band;
3. the weights become scores: scaled so that the fitted boundary lies at 5 points
   (`required_score`: no rule firing is 0 points), clipped to [-5, 5], rounded to 0.1. A rule keeps
   the sign its meaning gave it (a spam sign stays at 0.1 or more, a ham sign at -0.1 or less: the
   fit weighs the evidence, it does not turn a heuristic around or off). Rules that
   never fire on the corpus (the session and network signals: no SMTP session here) and GTUBE keep
   the scores their meaning gave them.

The regularisation and the ham weight are chosen by two-fold cross-validation inside the training
half: fit on one fold, count detection and false positives at 5 points on the other, without and
with Bayes. `--write` puts the scores of the chosen fit into deploy/spam/rules/*.cf.
"""
from __future__ import annotations

import argparse
import asyncio
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.spam_accuracy import trained_model  # noqa: E402
from bench.spam_corpus import corpus_dir, load, split  # noqa: E402
from consumers.stages.spam.rules import RuleSet, shipped_rule_files  # noqa: E402
from consumers.stages.spam.scorer import Scorer, rule_paths  # noqa: E402
from consumers.stages.spam.settings import SpamSettings  # noqa: E402
from pipeline.cli.spam import file_event  # noqa: E402
from pipeline.mail.message import parse_message  # noqa: E402

BANDS = ("BAYES_00", "BAYES_05", "BAYES_20", "BAYES_40", "BAYES_50", "BAYES_60", "BAYES_80", "BAYES_95",
         "BAYES_99")
EDGES = (0.01, 0.05, 0.2, 0.4, 0.6, 0.8, 0.95, 0.99)
KEEP = ("GTUBE",)


def band(p: float | None) -> int:
    p = 0.5 if p is None else p
    return int(np.searchsorted(EDGES, p, side="right"))


def collect(training, settings: SpamSettings, rules: RuleSet) -> list[tuple[int, int, set[str], float, int, bool]]:
    """(fold, spam?, rules that fired, their score without BAYES_*, Bayes band, Bayes >= 0.999) per message
    of the training half, Bayes from a model trained on the other fold."""
    folds = [[s for s in training if (s.sha256[1] in "01234567") == (k == 0)] for k in (0, 1)]
    found = []
    for k in (0, 1):
        scorer = Scorer(settings, rules, asyncio.run(trained_model(folds[1 - k], settings)))
        for sample in folds[k]:
            scored = scorer.score(parse_message(sample.raw), file_event(sample.raw))
            hits = [h for h in scored.hits if not h.name.startswith("BAYES_")]
            bayes = scored.bayes if scored.bayes is not None else 0.5
            found.append((k, int(sample.label == "spam"), {h.name for h in hits}, sum(h.score for h in hits),
                          band(bayes), bayes >= 0.999))
    return found


def design(rows, names: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features (rules, then the bands and BAYES_999) of each message twice: without and with Bayes."""
    index = {name: i for i, name in enumerate(names)}
    width = len(names) + len(BANDS) + 1
    x = np.zeros((2 * len(rows), width))
    y = np.zeros(2 * len(rows))
    fold = np.zeros(2 * len(rows), int)
    for i, (k, spam, fired, _, b, top) in enumerate(rows):
        for row in (2 * i, 2 * i + 1):
            for name in fired & index.keys():
                x[row, index[name]] = 1
            y[row], fold[row] = spam, k
        x[2 * i + 1, len(names) + b] = 1
        x[2 * i + 1, width - 1] = top
    return x, y, fold


def shipped_scores() -> dict[str, float]:
    found = {}
    for path in shipped_rule_files():
        for match in re.finditer(r"^score\s+(\w+)\s+(\S+)$", path.read_text(), re.M):
            found[match.group(1)] = float(match.group(2))
    return found


def fit(x: np.ndarray, y: np.ndarray, ham_weight: float, l2: float, signs: np.ndarray,
        steps: int = 3000) -> np.ndarray:
    """Logistic regression by projected gradient descent (each weight keeps its sign, 0 allowed while
    fitting); returns the scores (see the module docstring)."""
    w, bias = np.zeros(x.shape[1]), 0.0
    weight = np.where(y == 1, 1.0, ham_weight)
    rate = 0.5
    for _ in range(steps):
        z = x @ w + bias
        p = 1 / (1 + np.exp(-z))
        g = weight * (p - y)
        w -= rate * (x.T @ g / len(y) + l2 * w)
        w = np.where(signs > 0, np.maximum(w, 0), np.where(signs < 0, np.minimum(w, 0), w))
        bias -= rate * g.mean()
    scale = 5.0 / max(-bias, 1e-6)
    scores = np.round(np.clip(w * scale, -5, 5), 1)
    return np.where(signs > 0, np.maximum(scores, 0.1), np.where(signs < 0, np.minimum(scores, -0.1), scores))


def rates(x: np.ndarray, y: np.ndarray, scores: np.ndarray) -> tuple[float, float, float, float]:
    """(detection, false positives) at 5 points without Bayes, then with it, in %."""
    total = x @ scores
    out = []
    for with_bayes in (0, 1):
        rows = np.arange(with_bayes, len(y), 2)
        spam, ham = rows[y[rows] == 1], rows[y[rows] == 0]
        out += [100 * np.mean(total[spam] >= 5), 100 * np.mean(total[ham] >= 5)]
    return tuple(out)  # type: ignore[return-value]


def write_scores(scores: dict[str, float]) -> None:
    for path in shipped_rule_files():
        text = path.read_text()
        for name, value in scores.items():
            text = re.sub(rf"^(score\s+{name}\s+)\S+$", lambda m: f"{m.group(1)}{value:g}", text, flags=re.M)
        path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus")
    parser.add_argument("--write", action="store_true", help="write the chosen scores into deploy/spam/rules/")
    parser.add_argument("--max-fp", type=float, default=0.4, help="false positives with Bayes allowed, in %")
    parser.add_argument("--ham-weight", type=float, help="use this ham weight instead of the cross-validated choice")
    parser.add_argument("--l2", type=float, help="and this regularisation")
    args = parser.parse_args()
    training, _ = split(load(corpus_dir(args.corpus)))
    settings = SpamSettings()
    rules = RuleSet.load(rule_paths(settings))
    rows = collect(training, settings, rules)
    names = sorted({n for _, _, fired, _, _, _ in rows for n in fired} - set(KEEP))
    x, y, fold = design(rows, names)
    shipped = shipped_scores()
    signs = np.array([np.sign(shipped.get(n, 0.0)) for n in names] + [0.0] * (len(BANDS) + 1))
    signs[len(names) + len(BANDS)] = 1.0  # BAYES_999 adds to BAYES_99
    print(f"training half: {int(y.sum() / 2)} spam, {int((1 - y).sum() / 2)} ham; {len(names)} rules fire on it")
    print("ham weight, L2: cross-validated detection / false positives at 5 points, rules only | with Bayes")
    results = []
    for ham_weight in (2.0, 3.0, 4.0, 6.0):
        for l2 in (1e-4, 3e-4, 1e-3):
            held = []
            for k in (0, 1):
                scores = fit(x[fold != k], y[fold != k], ham_weight, l2, signs)
                held.append(rates(x[fold == k], y[fold == k], scores))
            mean = np.mean(held, axis=0)
            results.append((ham_weight, l2, mean))
            print(f"  {ham_weight:4g} {l2:6g}: {mean[0]:5.1f} / {mean[1]:4.2f} | {mean[2]:5.1f} / {mean[3]:4.2f}")
    allowed = [r for r in results if r[2][3] <= args.max_fp and r[2][1] <= 2.0] or results
    ham_weight, l2, _ = max(allowed, key=lambda r: r[2][2] + r[2][0] / 10)
    if args.ham_weight is not None:
        ham_weight, l2 = args.ham_weight, args.l2 if args.l2 is not None else l2
    scores = fit(x, y, ham_weight, l2, signs)
    print(f"chosen: ham weight {ham_weight:g}, L2 {l2:g}; on the whole training half: "
          "%.1f / %.2f | %.1f / %.2f" % rates(x, y, scores))
    fitted = dict(zip([*names, *BANDS, "BAYES_999"], scores.tolist()))
    for name, value in sorted(fitted.items()):
        print(f"score {name} {value:g}")
    if args.write:
        write_scores(fitted)
        print("written to deploy/spam/rules/")


if __name__ == "__main__":
    main()
