"""The shipped rule set: it loads, GTUBE is far above any threshold, ordinary mail stays low, spam adds up."""
from __future__ import annotations

import base64
import dataclasses
import re

import pytest

from consumers.stages.spam.builtins import BUILTINS
from consumers.stages.spam.rulefile import EvalTest, read_rule_files
from consumers.stages.spam.rules import RuleSet, shipped_rule_files
from schemas.stages.auth import AuthDetails, DkimDetails, DmarcDetails, SpfDetails
from tests.consumers.stages.spam.scanning import context, message, result

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
REJECT_SCORE = 15.0  # the stage's default reject threshold in points


@pytest.fixture(scope="module")
def shipped() -> RuleSet:
    return RuleSet.load(shipped_rule_files())


def score(ruleset: RuleSet, ctx) -> float:
    return sum(hit.score for hit in ruleset.evaluate(ctx))


def test_the_shipped_files_load_and_every_rule_that_counts_is_described(shipped):
    book = read_rule_files(shipped_rule_files())
    assert [p.name for p in shipped_rule_files()][:2] == ["00_gtube.cf", "10_header.cf"]
    assert len(shipped) >= 150
    undescribed = [name for name in shipped.names if not book.descriptions.get(name)]
    assert undescribed == []


def test_every_built_in_and_signal_is_a_shipped_rule():
    used = {rule.test.builtin for rule in read_rule_files(shipped_rule_files()).rules if isinstance(rule.test, EvalTest)}
    unused = sorted(name for name in BUILTINS if not name.startswith("_") and name not in used | {"listed_in"})
    assert unused == []  # listed_in is for sites that weigh their own lists


@pytest.mark.parametrize("body, content_type, cte", [
    (GTUBE, "text/plain", "7bit"),
    (f"<html><body><p>{GTUBE}</p></body></html>", "text/html", "7bit"),
    (base64.encodebytes(GTUBE.encode()).decode(), "text/plain", "base64"),
])
def test_gtube_scores_far_above_the_reject_threshold(shipped, body, content_type, cte):
    raw = message(body=body, content_type=content_type, headers=f"Content-Transfer-Encoding: {cte}\n")
    assert score(shipped, context(raw)) >= 1000 > REJECT_SCORE


def test_an_ordinary_message_with_good_authentication_scores_low(shipped):
    auth = AuthDetails(authserv_id="mx.school.test", spf=SpfDetails(result="pass", domain="good.test",
                                                                     identity="mailfrom"),
                       dkim=[DkimDetails(result="pass", domain="good.test")],
                       dmarc=DmarcDetails(result="pass", from_domain="good.test", spf_aligned=True, dkim_aligned=True))
    ctx = context(message(), history=(result("auth", dataclasses.asdict(auth)),), reverse_name="mx.good.test",
                  checks={"fcrdns": "pass"}, bayes=0.002)
    hits = shipped.evaluate(ctx)
    assert {h.name for h in hits} == {"SPF_PASS", "DKIM_VALID", "DKIM_VALID_AUTHOR", "DMARC_PASS", "BAYES_00"}
    assert sum(h.score for h in hits) < 0


def test_a_bulk_spam_adds_up_past_the_tag_threshold(shipped):
    body = ("<html><body><center><font size=6 color=red>CONGRATULATIONS!!!</font><br>"
            "Dear Friend, you have been selected! Earn $5,000 per week working from home. "
            "This is not spam. Order now: limited time offer, 100% satisfaction guaranteed, no obligation!<br>"
            '<a href="http://203.0.113.9/o.php">Click here</a> - '
            '<a href="http://cheap.evil.test/">www.paypal.com</a><br>'
            "To be removed from our mailing list, reply with REMOVE in the subject.</center></body></html>")
    raw = message(subject="GET RICH QUICK!!!    ID4711", body=body, content_type="text/html",
                  sender="winner2024@prizes.test", to="undisclosed-recipients:;", message_id="<12345>")
    hits = {h.name: h.score for h in shipped.evaluate(context(raw, ip="81.2.69.142"))}
    expected = {"SUBJ_EXCLAMATIONS", "SUBJ_TRAILING_ID", "SUBJ_ALL_CAPS", "REMOVE_IN_SUBJECT", "NOT_SPAM_CLAIM",
                "EARN_MONEY", "WORK_FROM_HOME", "DEAR_SOMEBODY", "HTML_ONLY", "LINK_TO_IP", "LINK_TEXT_MISMATCH",
                "MESSAGE_ID_MALFORMED", "UNDISCLOSED_RECIPIENTS", "FROM_ENDS_IN_NUMS", "RDNS_NONE",
                "REMOVAL_WITHOUT_LIST_HEADERS", "SALES_PRESSURE_4"}
    assert expected <= set(hits), expected - set(hits)
    assert sum(hits.values()) >= REJECT_SCORE


def test_signals_turn_a_borderline_message_into_spam(shipped):
    auth = AuthDetails(authserv_id="mx.school.test", spf=SpfDetails(result="fail", domain="good.test",
                                                                     identity="mailfrom"),
                       dmarc=DmarcDetails(result="fail", from_domain="good.test", policy="quarantine"),
                       dmarc_quarantine=True)
    plain = score(shipped, context(message(), reverse_name="mx.good.test"))
    signalled = score(shipped, context(message(), reverse_name="mx.good.test", checks={"dnsbl": "score=1"},
                                       history=(result("auth", dataclasses.asdict(auth)),)))
    assert plain < 1 and signalled >= 5  # DNSBL 2.0 + SPF fail 1.0 + DMARC fail 1.5 + quarantine 3.0 + DKIM none


def test_shipped_scores_are_round_and_within_sane_bounds():
    for path in shipped_rule_files():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            found = re.match(r"score\s+(\w+)\s+(\S+)$", line)
            if found and found.group(1) != "GTUBE":
                assert -5 <= float(found.group(2)) <= 5, f"{path.name}:{number}"
