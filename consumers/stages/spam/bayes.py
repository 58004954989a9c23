"""The Bayes classifier's mathematics: Robinson's f(w) per token, Fisher's chi-square to combine them.

This is the classifier of SpamAssassin (Bayes plugin, CombineChi), Bogofilter and SpamBayes, after
Gary Robinson ("A Statistical Approach to the Spam Problem", Linux Journal 2003):

1. **Per token**, from the learned counts (`spam` and `ham` messages that had it, out of `nspam`
   and `nham` learned): Graham's ratio p(w) = (spam/nspam) / (spam/nspam + ham/nham), then
   Robinson's f(w) = (s·x + n·p(w)) / (s + n) with n = spam + ham: a token seen rarely is pulled
   toward x, the assumed probability of a token never seen, by the strength s. Tokens never
   learned (n = 0) are left out, as SpamAssassin does.
2. **Selection**: tokens whose |f(w) − 0.5| is below `min_strength` say nothing and are dropped;
   of the others the `max_significant` strongest are used (SpamAssassin: 150).
3. **Fisher's combining**: if the f(w) were random, −2·Σ ln f(w) would follow χ² with 2n degrees
   of freedom. H = C⁻¹(−2·Σ ln f(w), 2n) and S = C⁻¹(−2·Σ ln(1 − f(w)), 2n), with C⁻¹ the χ²
   survival function; the spam probability is (1 + H − S) / 2. Mostly near 0 or 1, 0.5 when the
   evidence is balanced or absent.

The model votes only once it learned `min_learned` messages of each class (both anchors: 200), and
not on a message with no significant token. Defaults: s = 1, x = 0.5, min_strength 0.1: the
textbook values (SpamAssassin tunes s = 0.03, x = 0.538, 0.346 on its corpora; Bogofilter estimates
x per database). `BayesSettings` is the `[stages.spam.bayes]` section.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from consumers.stages.spam.autolearn import AutolearnSettings
from pipeline.settings import ConfigError

__all__ = ["BayesSettings", "BayesResult", "token_probabilities", "chi2q", "fisher", "classify"]


@dataclass(frozen=True, slots=True)
class BayesSettings:
    """`[stages.spam.bayes]`: the classifier, the bounded model, its snapshots, autolearn."""

    enabled: bool = True
    min_learned: int = 200  # messages of each class learned before the classifier votes
    robinson_s: float = 0.5  # strength of the prior for rarely seen tokens (cross-validated on the training half: docs/performance.md)
    robinson_x: float = 0.5  # probability assumed for a token never seen
    min_strength: float = 0.15  # tokens with |f(w) - 0.5| below this are left out
    max_significant: int = 150  # the strongest tokens combined
    max_tokens: int = 2_097_152  # distinct tokens the model holds (16 bytes each); see model.py for the rule past it
    snapshot_every: int = 1000  # learn events folded between two snapshots
    snapshot_seconds: float = 300.0  # and at most this long between them while something changed
    ignore_headers: list[str] = field(default_factory=list)  # more header fields the tokenizer leaves out
    autolearn: AutolearnSettings = field(default_factory=AutolearnSettings)

    def __post_init__(self) -> None:
        key = "stages.spam.bayes"
        if self.min_learned < 1:
            raise ConfigError(f"{key}.min_learned: must be at least 1")
        if not self.robinson_s > 0:
            raise ConfigError(f"{key}.robinson_s: must be above 0")
        if not 0 < self.robinson_x < 1:
            raise ConfigError(f"{key}.robinson_x: expected a probability between 0 and 1")
        if not 0 <= self.min_strength < 0.5:
            raise ConfigError(f"{key}.min_strength: expected a number from 0 to below 0.5")
        if self.max_significant < 1:
            raise ConfigError(f"{key}.max_significant: must be at least 1")
        if self.max_tokens < 1024:
            raise ConfigError(f"{key}.max_tokens: must be at least 1024")
        if self.snapshot_every < 1 or self.snapshot_seconds <= 0:
            raise ConfigError(f"{key}.snapshot_every and snapshot_seconds: must be above 0")


@dataclass(frozen=True, slots=True)
class BayesResult:
    probability: float  # that the message is spam, in [0, 1]
    significant: int  # tokens combined
    known: int  # tokens of the message the model has counts for
    tokens: int  # tokens of the message


def token_probabilities(spam: np.ndarray, ham: np.ndarray, nspam: int, nham: int, s: float, x: float) -> np.ndarray:
    """Robinson's f(w) of each token (counts > 0 in at least one class; both classes learned)."""
    spam, ham = spam.astype(np.float64), ham.astype(np.float64)
    ratio = spam * nham / (spam * nham + ham * nspam)  # Graham's p(w), with the class sizes
    n = spam + ham
    return (s * x + n * ratio) / (s + n)


@lru_cache(maxsize=64)
def _log_factorials(count: int) -> np.ndarray:
    return np.array([math.lgamma(i + 1) for i in range(count)])


def chi2q(x2: float, half_dof: int) -> float:
    """P(χ² ≥ x2) for 2·half_dof degrees of freedom: e^(−m) · Σ_{i<half_dof} m^i / i!, m = x2/2,
    summed in logarithms (the terms underflow long before the sum does)."""
    m = x2 / 2.0
    if m <= 0:
        return 1.0
    i = np.arange(half_dof)
    terms = -m + i * math.log(m) - _log_factorials(half_dof)
    top = terms.max()
    return min(1.0, math.exp(top + math.log(np.exp(terms - top).sum())))


def fisher(probabilities: np.ndarray) -> float:
    """Fisher's chi-square combining of token probabilities (each strictly between 0 and 1)."""
    n = len(probabilities)
    hammy = chi2q(-2.0 * float(np.log(probabilities).sum()), n)  # near 1 when the tokens are spammy
    spammy = chi2q(-2.0 * float(np.log1p(-probabilities).sum()), n)  # near 1 when they are hammy
    return (1.0 + hammy - spammy) / 2.0


def classify(spam: np.ndarray, ham: np.ndarray, nspam: int, nham: int, settings: BayesSettings) -> BayesResult | None:
    """The spam probability of a message whose tokens have these counts (in a fixed token order),
    or None: fewer than `min_learned` messages of a class, or no significant token."""
    if nspam < settings.min_learned or nham < settings.min_learned:
        return None
    known = (spam + ham) > 0
    f = token_probabilities(spam[known], ham[known], nspam, nham, settings.robinson_s, settings.robinson_x)
    strength = np.abs(f - 0.5)
    order = np.argsort(-strength, kind="stable")[:settings.max_significant]  # ties: the token order
    chosen = f[order][strength[order] >= settings.min_strength]
    if not len(chosen):
        return None
    chosen = np.clip(chosen, 1e-12, 1 - 1e-12)  # s > 0 keeps f inside (0, 1); guard the logarithms anyway
    return BayesResult(probability=fisher(chosen), significant=len(chosen), known=int(known.sum()), tokens=len(spam))
