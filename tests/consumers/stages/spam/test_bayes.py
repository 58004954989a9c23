"""Robinson's f(w) and Fisher's chi-square combining, against worked examples and known values."""
from __future__ import annotations

import math

import numpy as np
import pytest

from consumers.stages.spam.bayes import BayesSettings, chi2q, classify, fisher, token_probabilities
from pipeline.settings import ConfigError


def test_robinson_f_worked_examples():
    # spam 3 of 10, ham 0 of 10: p(w) = 1, n = 3 -> (1·0.5 + 3·1) / (1 + 3) = 0.875
    # spam 2 of 10, ham 2 of 20: p(w) = 0.2 / (0.2 + 0.1) = 2/3, n = 4 -> (0.5 + 4·2/3) / 5 = 0.6333...
    # spam 0 of 10, ham 1 of 10: p(w) = 0, n = 1 -> 0.5 / 2 = 0.25
    f = token_probabilities(np.array([3, 2, 0]), np.array([0, 2, 1]), 10, 10, s=1.0, x=0.5)
    assert f[0] == pytest.approx(0.875)
    assert f[2] == pytest.approx(0.25)
    f = token_probabilities(np.array([2]), np.array([2]), 10, 20, s=1.0, x=0.5)
    assert f[0] == pytest.approx((0.5 + 4 * 2 / 3) / 5)
    # SpamAssassin's constants: s = 0.03, x = 0.538 trust the counts far more
    f = token_probabilities(np.array([1]), np.array([0]), 10, 10, s=0.03, x=0.538)
    assert f[0] == pytest.approx((0.03 * 0.538 + 1) / 1.03)


def test_chi2q_known_values():
    assert chi2q(0.0, 3) == 1.0
    for x2 in (0.5, 3.0, 20.0):
        assert chi2q(x2, 1) == pytest.approx(math.exp(-x2 / 2))  # 2 degrees of freedom
        assert chi2q(x2, 2) == pytest.approx(math.exp(-x2 / 2) * (1 + x2 / 2))  # 4
    assert chi2q(9.487729, 2) == pytest.approx(0.05, abs=1e-6)  # the 95 % quantile of χ²(4)
    assert chi2q(31.410433, 10) == pytest.approx(0.05, abs=1e-6)  # of χ²(20)
    assert chi2q(3000.0, 150) == pytest.approx(0.0, abs=1e-300)  # far in the tail: no overflow, no NaN
    assert chi2q(10.0, 150) == pytest.approx(1.0) and chi2q(10.0, 150) <= 1.0  # the sum is capped at 1


def test_fisher_is_symmetric_and_neutral_at_one_half():
    assert fisher(np.full(40, 0.5)) == pytest.approx(0.5)
    probabilities = np.array([0.99, 0.95, 0.9, 0.2, 0.85])
    assert fisher(probabilities) == pytest.approx(1 - fisher(1 - probabilities))
    assert fisher(np.full(20, 0.99)) > 0.999
    assert fisher(np.full(20, 0.01)) < 0.001
    # one strong token against many weak ones of the other side: the many win
    assert fisher(np.array([0.99] + [0.3] * 30)) < 0.1


def test_fisher_matches_the_formula():
    p = np.array([0.9, 0.8, 0.35, 0.97])
    n = len(p)
    h = chi2q(-2 * sum(math.log(x) for x in p), n)
    s = chi2q(-2 * sum(math.log(1 - x) for x in p), n)
    assert fisher(p) == pytest.approx((1 + h - s) / 2)
    # the textbook chi2q (SpamAssassin's loop), as a second opinion
    def direct(x2, half):
        m = x2 / 2
        term = total = math.exp(-m)
        for i in range(1, half):
            term *= m / i
            total += term
        return min(total, 1.0)
    assert h == pytest.approx(direct(-2 * sum(math.log(x) for x in p), n))


def settings(**changes) -> BayesSettings:
    return BayesSettings(**{"min_learned": 10, **changes})


def test_classify_needs_enough_of_each_class():
    spam, ham = np.array([9, 0]), np.array([0, 9])
    assert classify(spam, ham, 9, 100, settings()) is None
    assert classify(spam, ham, 100, 9, settings()) is None
    assert classify(spam, ham, 10, 10, settings()) is not None


def test_classify_uses_only_known_significant_tokens():
    # tokens: spammy, hammy, unknown, neutral (f = 0.5)
    spam, ham = np.array([50, 1, 0, 5]), np.array([1, 50, 0, 5])
    result = classify(spam, ham, 100, 100, settings())
    assert (result.tokens, result.known, result.significant) == (4, 3, 2)
    assert result.probability == pytest.approx(0.5, abs=1e-9)  # one spammy, one hammy of equal strength
    spammy = classify(np.array([50, 40, 30]), np.array([1, 0, 2]), 100, 100, settings())
    assert spammy.probability > 0.99
    nothing = classify(np.array([0, 5]), np.array([0, 5]), 100, 100, settings())
    assert nothing is None  # no token says anything


def test_classify_takes_the_strongest_tokens_only():
    # 3 strong hammy tokens, 10 weaker spammy ones: with max_significant 3 only the hammy ones count
    spam = np.array([0, 0, 0] + [8] * 10)
    ham = np.array([60, 60, 60] + [2] * 10)
    assert classify(spam, ham, 100, 100, settings(max_significant=3)).probability < 0.01
    assert classify(spam, ham, 100, 100, settings(max_significant=13)).significant == 13


@pytest.mark.parametrize("changes, key", [
    ({"min_learned": 0}, "min_learned"),
    ({"robinson_s": 0.0}, "robinson_s"),
    ({"robinson_x": 1.0}, "robinson_x"),
    ({"min_strength": 0.5}, "min_strength"),
    ({"max_significant": 0}, "max_significant"),
    ({"max_tokens": 100}, "max_tokens"),
])
def test_settings_are_checked(changes, key):
    with pytest.raises(ConfigError, match=key):
        BayesSettings(**changes)
