"""Details the spam stage records in its result: the score, the rules that fired, and what it did per recipient."""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["RuleHit", "RecipientAction", "SpamDetails", "ACTIONS"]

# what the stage did for one recipient, mildest first
ACTIONS = ("none", "allowed", "tag_probable", "tag_certain", "quarantine", "reject", "blocked")


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleHit:
    name: str
    score: float
    description: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RecipientAction:
    recipient: str
    action: str  # one of ACTIONS
    why: str = ""  # "probability 73% >= tag_certain 70%", "sender on the recipient's allow list", ...


@dataclass(frozen=True, slots=True, kw_only=True)
class SpamDetails:
    score: float  # the sum of the scores of the rules that fired
    probability: float  # spam probability in %, from the score (stages.spam.required_score)
    required_score: float
    rules: list[RuleHit] = field(default_factory=list)  # highest score first
    bayes: float | None = None  # the classifier's spam probability in [0, 1]; None: it did not vote
    actions: list[RecipientAction] = field(default_factory=list)  # one per recipient in play
    autolearned: str = ""  # "spam" or "ham" when the message was learned automatically
