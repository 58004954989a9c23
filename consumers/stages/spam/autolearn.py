"""Autolearn: the spam stage teaching its own Bayes model from messages the rules are sure about.

Off by default, as in SpamAssassin (`bayes_auto_learn`) and Rspamd, because a model that learns
from its own verdicts can drift: a wrong verdict teaches the next one. The guards:

- **The score without Bayes.** The rules alone decide (the BAYES_* hits are subtracted): spam at
  `spam_at` points or more (SpamAssassin: 12), ham below `ham_below` (SpamAssassin: 0.1). A message
  on which a rule of `ignore_rules` fired (GTUBE: a test string, not a spam sample) is never learned.
- **Class balance.** A class is not learned while it already has `max_ratio` times as many messages
  as the other (counted from `min_learned` up, so both classes can start), so a flood of one kind
  cannot drown the other.
- **Already in class.** Not when the model already learned this very message in that class, nor
  when Bayes already puts it at `confident` or beyond (nothing to learn: SpamAssassin and Rspamd
  count such messages only once the model disagrees).

`autolearn_label` decides; the stage writes the learn event (`source` "autolearn") like the CLI does.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from pipeline.settings import ConfigError

__all__ = ["AutolearnSettings", "autolearn_label"]


@dataclass(frozen=True, slots=True)
class AutolearnSettings:
    enabled: bool = False
    spam_at: float = 12.0  # score without Bayes at or above which a message is learned as spam
    ham_below: float = 0.1  # score without Bayes below which a message is learned as ham
    max_ratio: float = 4.0  # a class is not learned while it has this many times the other's messages
    confident: float = 0.99  # not learned when Bayes is this sure already (>= it for spam, <= 1 - it for ham)
    ignore_rules: list[str] = field(default_factory=lambda: ["GTUBE"])  # never learned when one of these fired

    def __post_init__(self) -> None:
        if self.ham_below >= self.spam_at:
            raise ConfigError("stages.spam.bayes.autolearn: ham_below must be lower than spam_at")
        if self.max_ratio < 1:
            raise ConfigError("stages.spam.bayes.autolearn.max_ratio: must be at least 1")
        if not 0.5 < self.confident <= 1:
            raise ConfigError("stages.spam.bayes.autolearn.confident: expected a probability above 0.5, at most 1")


class _Hit(Protocol):
    """A rule that fired: the rules' `Hit` (name and score) is all this needs."""

    name: str
    score: float


def autolearn_label(settings: AutolearnSettings, score: float, hits: Iterable[_Hit], *, bayes: float | None,
                    learned: tuple[int, int], min_learned: int,
                    already: str | None = None) -> Literal["spam", "ham"] | None:
    """The class to learn a scored message in, or None (see the module docstring for the guards).

    `score` is the message's total, `hits` the rules that fired (BAYES_* among them), `bayes` the
    model's probability (None: no vote), `learned` the model's (spam, ham) message counts,
    `already` the label the model holds for this message's digest (None: not learned).
    """
    if not settings.enabled:
        return None
    hits = list(hits)
    if any(hit.name in settings.ignore_rules for hit in hits):
        return None
    without_bayes = score - sum(hit.score for hit in hits if hit.name.startswith("BAYES_"))
    if without_bayes >= settings.spam_at:
        label: Literal["spam", "ham"] = "spam"
    elif without_bayes < settings.ham_below:
        label = "ham"
    else:
        return None
    if already == label:
        return None
    if bayes is not None and (bayes >= settings.confident if label == "spam" else bayes <= 1 - settings.confident):
        return None
    spam, ham = learned
    mine, other = (spam, ham) if label == "spam" else (ham, spam)
    if mine + 1 > settings.max_ratio * max(other, min_learned):
        return None
    return label
