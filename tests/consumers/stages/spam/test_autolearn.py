"""Autolearn's guards: the score without Bayes, test strings, class balance, already in class."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from consumers.stages.spam.autolearn import AutolearnSettings, autolearn_label
from pipeline.settings import ConfigError

ON = AutolearnSettings(enabled=True)


@dataclass(frozen=True)
class Hit:
    name: str
    score: float


def label(score, hits=(), *, settings=ON, bayes=0.5, learned=(1000, 1000), already=None):
    return autolearn_label(settings, score, hits, bayes=bayes, learned=learned, min_learned=200, already=already)


def test_off_by_default():
    assert label(30.0, settings=AutolearnSettings()) is None


def test_the_score_without_bayes_decides():
    assert label(13.0, [Hit("URIBL_BLACK", 9.0), Hit("RDNS_NONE", 4.0)]) == "spam"
    assert label(-2.0, [Hit("DKIM_VALID_AU", -2.0)]) == "ham"
    assert label(5.0) is None  # in between
    # BAYES_99 pushed it over 12: the rules alone did not
    assert label(13.0, [Hit("URIBL_BLACK", 9.5), Hit("BAYES_99", 3.5)], bayes=0.9) is None
    # BAYES_00 pulled it under 0.1: the rules alone did not
    assert label(-1.0, [Hit("HTML_ONLY", 0.9), Hit("BAYES_00", -1.9)], bayes=0.1) is None


def test_test_strings_are_never_learned():
    assert label(1000.0, [Hit("GTUBE", 1000.0)]) is None


def test_class_balance():
    assert label(15.0, learned=(800, 0)) is None  # 4 × max(0, 200)
    assert label(15.0, learned=(799, 0)) == "spam"
    assert label(0.0, learned=(1000, 4001)) is None
    assert label(0.0, learned=(1000, 3999)) == "ham"


def test_already_in_class():
    assert label(15.0, already="spam") is None
    assert label(15.0, already="ham") == "spam"  # the rules overrule an earlier ham: relearned
    assert label(15.0, bayes=0.995) is None
    assert label(0.0, bayes=0.005) is None
    assert label(0.0, bayes=None) == "ham"


@pytest.mark.parametrize("changes, key", [
    ({"ham_below": 12.0}, "ham_below"), ({"max_ratio": 0.5}, "max_ratio"), ({"confident": 0.5}, "confident")])
def test_settings_are_checked(changes, key):
    with pytest.raises(ConfigError, match=key):
        AutolearnSettings(**changes)
