"""The training log of the spam stage's Bayes model (`consumers/stages/spam/model.py` folds it)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from schemas.base import Event

__all__ = ["SpamLearned"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SpamLearned(Event):
    """A message learned as spam or ham, or forgotten: one record of the Bayes model's log.

    Kept in the compacted topic ``<prefix>.spam.learn`` keyed by `digest`, so the log holds the
    latest word on every message; every spam stage instance folds it into the same model
    (consumers/stages/spam/model.py). The message itself is never here: only its token set, hashed.

    `digest` is the SHA-256 (hex) of the tokenizer version and the sorted token hashes: two copies of
    a message that the tokenizer sees alike (the scanned one and the delivered one, which differ only
    in headers the tokenizer leaves out) are the same message, and a record whose tokens do not give
    its digest is refused. `tokens`: the token hashes, unsigned 64-bit little-endian, sorted, base64.
    """

    type: Literal["spam_learned"] = "spam_learned"
    digest: str
    label: Literal["spam", "ham", "forget"]
    tokens: str
    tokenizer_version: int
    source: Literal["cli", "autolearn", "portal"] = "cli"
