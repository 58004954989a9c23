"""The schema on the real engine (chDB): versioned migrations, and the analysts' views over real rows."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from consumers.sinks.analytics.schema import EVENT_COLUMNS, MIGRATIONS
from consumers.sinks.analytics.store import AnalyticsStore
from schemas.events import Quarantined, Reply, Result, SmtpCheck, SmtpReject, StageResult, Verdict
from schemas.stages.spam import RecipientAction, RuleHit, SpamDetails
from tests.consumers.sinks.analytics.samples import make_settings, received


def test_migrations_are_versioned_and_idempotent(home: Path) -> None:
    settings = make_settings(home)
    first = AnalyticsStore.open(settings)
    try:
        assert first.applied_versions() == [m.version for m in MIGRATIONS]
    finally:
        first.close()
    again = AnalyticsStore.open(settings)
    try:
        assert again.migrate() == []
        _, rows = again.query("SELECT version, count() FROM schema_migrations GROUP BY version ORDER BY version")
        assert rows == [[m.version, 1] for m in MIGRATIONS]
        _, tables = again.query("SELECT name FROM system.tables WHERE database = currentDatabase() ORDER BY name")
        names = {t[0] for t in tables}
        assert {"events", "schema_migrations", "rejections_by_reason", "stage_verdicts"} <= names
    finally:
        again.close()


def test_the_events_table_has_the_columns_rows_are_made_of(store: AnalyticsStore) -> None:
    _, columns = store.query("SELECT name FROM system.columns WHERE database = currentDatabase() "
                             "AND table = 'events' ORDER BY position")
    assert [c[0] for c in columns] == [*EVENT_COLUMNS, "ingested_at"]


def _reject(check: str, reason: str, code: int = 554) -> SmtpReject:
    return SmtpReject(session_id="s", client_ip="127.0.1.66", phase="rcpt", check=check, reason_code=reason,
                      reply=Reply(code=code, enhanced=f"{code // 100}.7.1", text="no"))


def _greylist(result: str) -> SmtpCheck:
    return SmtpCheck(session_id="s", client_ip="127.0.2.10", phase="rcpt", check="greylist", result=result,
                     sender="a@good.test", recipient="max.mustermann@school.test")


def test_smtp_rejections_give_the_share_of_each_reason(store: AnalyticsStore) -> None:
    events = ([_reject("dnsbl", "dnsbl_listed") for _ in range(8)] + [_reject("fcrdns", "fcrdns_failed", 550)]
              + [_reject("recipient", "unknown_recipient", 550)])  # each with its own event id
    store.insert(events)
    _, rows = store.query("SELECT check_name, reason_code, refusals, pct FROM smtp_rejections ORDER BY refusals DESC, "
                          "check_name")
    assert rows == [["dnsbl", "dnsbl_listed", 8, 80.0], ["fcrdns", "fcrdns_failed", 1, 10.0],
                    ["recipient", "unknown_recipient", 1, 10.0]]


def test_greylisting_view_reports_delayed_and_passed_after_retry(store: AnalyticsStore) -> None:
    results = ["delayed"] * 4 + ["passed_after_retry"] * 3 + ["auto_whitelisted"] * 2 + ["whitelisted"]
    store.insert([_greylist(r) for r in results])
    _, rows = store.query("SELECT decisions, delayed, passed_after_retry, whitelisted, delayed_pct, "
                          "passed_after_retry_pct FROM greylisting")
    assert rows == [[10, 4, 3, 3, 40.0, 75.0]]


def _spam_result(score: float, probability: float, rules: list[str], actions: dict[str, str]) -> Result:
    details = SpamDetails(score=score, probability=probability, required_score=5.0,
                          rules=[RuleHit(name=r, score=1.0) for r in rules],
                          actions=[RecipientAction(recipient=r, action=a) for r, a in actions.items()])
    return Result(stage="spam", verdict=Verdict.FAIL if probability >= 50 else Verdict.PASS, score=score,
                  details=dataclasses.asdict(details))


def test_spam_views_give_scores_per_message_actions_per_recipient_rules_and_daily_shares(store) -> None:
    spammy, clean = received(1, time="2026-12-03T10:00:00.000Z"), received(2, time="2026-12-03T11:00:00.000Z")
    # a message tagged for one recipient and quarantined for the other: the quarantined event carries it too
    tagged = _spam_result(8.0, 80.0, ["HTML_ONLY", "BAYES_99"], {"bob@school.test": "tag_certain",
                                                                  "carol@school.test": "quarantine"})
    ham = _spam_result(0.5, 5.0, ["HTML_ONLY"], {"bob@school.test": "none", "carol@school.test": "none"})
    store.insert([
        StageResult(message_id=spammy.message_id, time="2026-12-03T10:00:01.000Z", result=tagged, message=spammy,
                    recipients=["bob@school.test"]),
        Quarantined(message_id=spammy.message_id, time="2026-12-03T10:00:01.000Z", stage="spam", reason="spam 80%",
                    recipients=["carol@school.test"], message=spammy, results=[tagged]),
        StageResult(message_id=clean.message_id, time="2026-12-03T11:00:01.000Z", result=ham, message=clean,
                    recipients=["bob@school.test", "carol@school.test"]),
    ])
    _, rows = store.query("SELECT message_id, score, probability, rules FROM spam_scores ORDER BY score")
    assert rows == [[clean.message_id, 0.5, 5.0, ["HTML_ONLY"]],
                    [spammy.message_id, 8.0, 80.0, ["HTML_ONLY", "BAYES_99"]]]  # once, though in two events
    _, rows = store.query("SELECT recipient, action FROM spam_actions WHERE message_id = "
                          f"'{spammy.message_id}' ORDER BY recipient")
    assert rows == [["bob@school.test", "tag_certain"], ["carol@school.test", "quarantine"]]
    _, rows = store.query("SELECT rule, on_spam, on_ham, ham_pct FROM spam_rules ORDER BY rule")
    assert rows == [["BAYES_99", 1, 0, 0.0], ["HTML_ONLY", 1, 1, 50.0]]
    _, rows = store.query("SELECT action, recipients, pct FROM spam_daily ORDER BY action")
    assert rows == [["none", 2, 50.0], ["quarantine", 1, 25.0], ["tag_certain", 1, 25.0]]
