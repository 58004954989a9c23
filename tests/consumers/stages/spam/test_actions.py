"""From a score to each recipient's action and the edits of their copies."""
from __future__ import annotations

import pytest

from consumers.stages.spam.actions import SITE, action_for, probability, spam_edits
from consumers.stages.spam.settings import SpamSettings
from pipeline.mail.render import render
from pipeline.settings import ConfigError
from pipeline.state.users import UserPrefs
from schemas.stages.spam import RecipientAction, RuleHit

S = SpamSettings()
SENDERS = ("news@shop.example", "info@shop.example")


def Prefs(**values) -> UserPrefs:  # noqa: N802 - reads like the class it makes
    return UserPrefs(**values)


@pytest.mark.parametrize("score, percent", [(-3, 0.0), (0, 0.0), (2.5, 25.0), (5, 50.0), (7, 70.0), (9.99, 99.9),
                                            (10, 100.0), (1000, 100.0)])
def test_the_probability_is_linear_in_the_score_up_to_twice_the_required_score(score, percent):
    assert probability(score, 5.0) == percent


def _action(score: float, prefs=SITE, senders=SENDERS, authenticated=True) -> str:
    return action_for("u@school.test", score, probability(score, S.required_score), prefs, senders, authenticated,
                      S).action


@pytest.mark.parametrize("score, action", [(1.0, "none"), (4.9, "none"), (5.0, "tag_probable"), (6.9, "tag_probable"),
                                           (7.0, "tag_certain"), (14.9, "tag_certain"), (15.0, "reject"),
                                           (1000, "reject")])
def test_the_site_thresholds_tag_and_reject(score, action):
    assert _action(score) == action


def test_quarantine_only_for_recipients_who_turned_it_on():
    assert _action(6.0, Prefs(quarantine=True)) == "quarantine"
    assert _action(6.0, Prefs(quarantine=False)) == "tag_probable"
    assert _action(4.0, Prefs(quarantine=True)) == "none"
    assert _action(4.0, Prefs(quarantine=True, quarantine_at=30.0)) == "quarantine"  # the user's own threshold


def test_a_users_own_thresholds_come_before_the_sites():
    assert _action(4.0, Prefs(tag_probable=40.0)) == "tag_probable"
    assert _action(6.0, Prefs(tag_certain=60.0)) == "tag_certain"
    assert _action(9.0, Prefs(reject_at=90.0)) == "reject"
    assert _action(9.0) == "tag_certain"


def test_allow_lists_need_an_authenticated_sender_and_block_lists_win():
    allow = Prefs(allow_senders=("@shop.example",))  # the domain and every name under it
    assert _action(12.0, allow) == "allowed"
    assert _action(12.0, allow, authenticated=False) == "tag_certain"  # a forged From gets nothing from the list
    assert _action(0.0, Prefs(block_senders=("news@shop.example",))) == "blocked"
    assert _action(0.0, Prefs(allow_senders=("@shop.example",), block_senders=("@example",))) == "blocked"
    assert _action(12.0, Prefs(allow_senders=("@notshop.example",))) == "tag_certain"
    assert _action(12.0, Prefs(allow_senders=("info@shop.example",)), senders=("", "INFO@Shop.Example")) == "allowed"


def test_every_copy_gets_the_score_headers_and_tagged_ones_the_flag_and_their_tag():
    hits = [RuleHit(name="HTML_ONLY", score=2.5), RuleHit(name="BAYES_99", score=3.5)]
    actions = [RecipientAction(recipient="a@s.test", action="tag_certain"),
               RecipientAction(recipient="b@s.test", action="none"),
               RecipientAction(recipient="c@s.test", action="tag_probable")]
    edits = spam_edits(6.0, 60.0, hits, 0.994, actions, S)
    raw = (b"X-Spam-Flag: YES\r\nX-Spam-Score: -100\r\nSubject: Angebot\r\nFrom: x@shop.example\r\n\r\n"
           b"Body stays as it was.\r\n")

    def copy_for(recipient: str) -> bytes:
        return render(raw, [e for e in edits if not e.recipients or recipient in e.recipients])

    for_a, for_b, for_c = copy_for("a@s.test"), copy_for("b@s.test"), copy_for("c@s.test")
    assert b"X-Spam-Score: -100" not in for_a and b"X-Spam-Score: 6.0\r\n" in for_a  # the forged ones are gone
    assert (b"X-Spam-Status: Yes, score=6.0 required=5 probability=60% tests=HTML_ONLY=2.5,BAYES_99=3.5 "
            b"bayes=0.9940\r\n") in for_b
    assert b"Subject: {SPAM!} Angebot" in for_a and b"X-Spam-Flag: YES" in for_a
    assert b"Subject: {SPAM?} Angebot" in for_c
    assert b"Subject: Angebot\r\n" in for_b and b"X-Spam-Flag" not in for_b
    assert all(copy.endswith(b"\r\n\r\nBody stays as it was.\r\n") for copy in (for_a, for_b, for_c))


@pytest.mark.parametrize("key, value, message", [
    ("required_score", 0.0, "more than 0"), ("tag_probable", 120.0, "0 to 100"),
    ("tag_certain", 40.0, "at least tag_probable"), ("header_score", "X Spam", "not a header field name"),
])
def test_settings_are_validated(key, value, message):
    with pytest.raises(ConfigError, match=message):
        SpamSettings(**{key: value})
