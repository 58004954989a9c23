"""`[stages.spam]`: the rule files, the score → probability mapping, the thresholds, the header names."""
from __future__ import annotations

from dataclasses import dataclass, field

from consumers.stages.spam.bayes import BayesSettings
from pipeline.settings import ConfigError

__all__ = ["SpamSettings"]


@dataclass(frozen=True, slots=True)
class SpamSettings:
    # the site's own rule files, read after the shipped ones (deploy/spam/rules/*.cf): they add rules
    # and override scores (`score NAME 0` turns a rule off); a glob is allowed
    rule_files: list[str] = field(default_factory=list)
    # the score at which the spam probability is 50 %: probability % = 50 × score / required_score,
    # clamped to 0–100 (SpamAssassin's 5 points, so 7 points are 70 %)
    required_score: float = 5.0
    # site thresholds on the probability in %; a user's own (`poststelle user set`) take precedence
    tag_probable: float = 50.0  # subject tag `tag_probable_text` from here
    tag_certain: float = 70.0  # subject tag `tag_certain_text` from here
    quarantine_at: float = 50.0  # held for users who turned their quarantine on
    # refused (554 at DATA; quarantined when the verdict comes after the 250) from this many points:
    # beyond 100 % the probability says nothing more, so this threshold is on the score
    reject_score: float = 15.0
    tag_probable_text: str = "{SPAM?}"
    tag_certain_text: str = "{SPAM!}"
    header_score: str = "X-Spam-Score"  # "7.3"
    header_status: str = "X-Spam-Status"  # "Yes, score=7.3 required=5.0 probability=73% tests=A=2.0,B=1.3 bayes=0.99"
    header_flag: str = "X-Spam-Flag"  # "YES" on the copies of recipients for whom it is tagged as spam
    remove_forged_headers: bool = True  # drop header fields with these names that came from outside
    # [stages.spam.bayes]: the classifier, its model (a fold of the learn topic) and autolearn
    bayes: BayesSettings = field(default_factory=BayesSettings)

    def __post_init__(self) -> None:
        if self.required_score <= 0:
            raise ConfigError("stages.spam.required_score: must be more than 0")
        for key in ("tag_probable", "tag_certain", "quarantine_at"):
            value = getattr(self, key)
            if not 0 <= value <= 100:
                raise ConfigError(f"stages.spam.{key}: a probability in % (0 to 100), got {value}")
        if self.tag_certain < self.tag_probable:
            raise ConfigError("stages.spam.tag_certain: must be at least tag_probable")
        for key in ("header_score", "header_status", "header_flag"):
            name = getattr(self, key)
            if not name or not all(33 <= ord(c) <= 126 and c != ":" for c in name):
                raise ConfigError(f"stages.spam.{key}: not a header field name: {name!r}")
