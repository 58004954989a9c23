"""Scoring one message: the rules, the Bayes model and the signals, the same for the stage and `spam check`.

`Scorer.score(parsed, received, history)` tokenizes the message for Bayes (when the model votes),
puts the classifier's probability into the `ScanContext` (the BAYES_* band rules read it), runs
every rule and adds up the scores of those that fired. It is plain CPU work with no I/O: the stage
runs it in a worker thread so the event loop keeps serving the consumer, and `poststelle spam
check` calls it directly. The model is read from that thread while the event loop may fold a new
learn event into it: a probability computed during a fold may count that one event partly, as if it
had come a moment earlier or later; the counts themselves are only ever changed by the loop.

The rule files are the shipped ones (deploy/spam/rules/*.cf, in name order), then the site's
(`stages.spam.rule_files`, in the order given; a relative path is taken from the directory of the
configuration file; a glob may match nothing, a plain path must exist). A broken file is refused
here, with its file, line and reason (`RuleFileError`, a `ConfigError`): the stage does not start.
"""
from __future__ import annotations

import glob
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from consumers.stages.spam.actions import probability
from consumers.stages.spam.context import ScanContext
from consumers.stages.spam.model import BayesModel
from consumers.stages.spam.rules import Hit, RuleSet, shipped_rule_files
from consumers.stages.spam.settings import SpamSettings
from consumers.stages.spam.tokens import TokenizerOptions, token_hashes, tokenize
from pipeline.mail.message import ParsedMessage
from pipeline.settings import ConfigError
from schemas.events import Received, Result

__all__ = ["Scorer", "Scored", "rule_paths", "tokenizer_options"]


@dataclass(frozen=True, slots=True)
class Scored:
    """What scoring found: the total, its probability in %, the rules that fired (highest score first)."""

    score: float
    probability: float
    hits: list[Hit]
    bayes: float | None = None  # the classifier's spam probability in [0, 1]; None: it did not vote
    hashes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))  # the message's tokens (autolearn)

    def top(self, count: int = 3) -> str:
        """The strongest rules that fired, for a rejection reason: "GTUBE, HTML_ONLY"."""
        return ", ".join(hit.name for hit in self.hits[:count] if hit.score > 0)


def rule_paths(settings: SpamSettings, config_file: str = "") -> list[Path]:
    """The shipped rule files, then the site's (see the module docstring); ConfigError for a missing one."""
    base = Path(config_file).resolve().parent if config_file else Path.cwd()
    paths = shipped_rule_files()
    for entry in settings.rule_files:
        pattern = Path(entry).expanduser()
        pattern = pattern if pattern.is_absolute() else base / pattern
        if glob.has_magic(str(pattern)):
            paths.extend(Path(p) for p in sorted(glob.glob(str(pattern))))
        elif pattern.is_file():
            paths.append(pattern)
        else:
            raise ConfigError(f"stages.spam.rule_files: {entry!r}: no such file ({pattern})")
    return paths


def tokenizer_options(settings: SpamSettings) -> TokenizerOptions:
    """What the tokenizer leaves out at this site: our own header names and tags, and the site's list.
    The stage and `poststelle spam learn` use the same, so training and scoring see the same tokens."""
    return TokenizerOptions.for_site(
        header_names=(settings.header_score, settings.header_status, settings.header_flag),
        subject_tags=(settings.tag_probable_text, settings.tag_certain_text),
        ignore_headers=settings.bayes.ignore_headers)


class Scorer:
    """The rule set and the model of one process (model None: rules only)."""

    def __init__(self, settings: SpamSettings, rules: RuleSet, model: BayesModel | None = None) -> None:
        self.settings = settings
        self.rules = rules
        self.model = model
        self.options = tokenizer_options(settings)

    @classmethod
    def load(cls, settings: SpamSettings, config_file: str = "", model: BayesModel | None = None) -> Scorer:
        """Compile the rule files (RuleFileError, with file, line and reason, for a broken one)."""
        return cls(settings, RuleSet.load(rule_paths(settings, config_file)), model)

    def hashes(self, parsed: ParsedMessage, received: Received | None) -> np.ndarray:
        return token_hashes(tokenize(parsed, received, self.options))

    def score(self, parsed: ParsedMessage, received: Received, history: Sequence[Result] = (),
              *, want_hashes: bool = False) -> Scored:
        """Score one message parsed with its content (see the module docstring)."""
        hashes = np.zeros(0, np.uint64)
        bayes = None
        if self.model is not None and self.settings.bayes.enabled:
            votes = min(self.model.nspam, self.model.nham) >= self.settings.bayes.min_learned
            if votes or want_hashes:
                hashes = self.hashes(parsed, received)
            if votes:
                bayes = self.model.probability(hashes)
        hits = self.rules.evaluate(ScanContext(parsed, received, tuple(history), bayes))
        hits.sort(key=lambda hit: -hit.score)
        total = round(sum(hit.score for hit in hits), 3)
        return Scored(total, probability(total, self.settings.required_score), hits, bayes, hashes)
