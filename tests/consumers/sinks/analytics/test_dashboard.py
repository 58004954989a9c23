"""The Grafana dashboard (deploy/grafana/poststelle.json) asks only for what exists: every metric its
PromQL names is defined by the code, and every SQL query runs on the analytics schema (in chDB)."""
from __future__ import annotations

import json
import re

import pytest

from consumers.sinks.analytics.store import AnalyticsStore
from schemas.events import Rejected, Result, StageResult, Verdict
from tests.consumers.sinks.analytics.samples import received, sample_events
from pipeline.cli.components import load_builtins
from pipeline.metrics import metric_names
from pipeline.settings import REPO_ROOT

DASHBOARD = json.loads((REPO_ROOT / "deploy/grafana/poststelle.json").read_text())
TARGETS = [(panel["title"], target) for panel in DASHBOARD["panels"] for target in panel["targets"]]
PROMQL = [(title, t["expr"]) for title, t in TARGETS if t["datasource"]["type"] == "prometheus"]
SQL = [(title, t["rawSql"]) for title, t in TARGETS if t["datasource"]["type"] == "grafana-clickhouse-datasource"]
# the ClickHouse plugin's macros, as the plugin expands them (over the last day)
MACROS = {
    r"\$__timeFilter\((\w+)\)": r"\1 >= now() - INTERVAL 1 DAY AND \1 <= now() + INTERVAL 1 MINUTE",
    r"\$__timeInterval\((\w+)\)": r"toStartOfInterval(toDateTime(\1), INTERVAL 60 second)",
    r"\$__fromTime": "(now() - INTERVAL 1 DAY)",
    r"\$__toTime": "(now() + INTERVAL 1 MINUTE)",
}


def test_the_dashboard_has_both_kinds_of_panel_and_nothing_else():
    assert PROMQL and SQL and len(PROMQL) + len(SQL) == len(TARGETS)
    titles = " ".join(title.lower() for title, _ in TARGETS)
    for view in ("throughput", "lag", "latency", "rejections by reason", "spam share"):
        assert view in titles, f"no panel on {view}"


@pytest.mark.parametrize(("title", "expr"), PROMQL, ids=[t for t, _ in PROMQL])
def test_every_metric_of_the_promql_is_defined(title, expr):
    load_builtins()  # the stages' own metrics (the virus scanner's up gauge) are defined in their modules
    used = set(re.findall(r"\b(?:poststelle|process)_[a-z0-9_]+", expr))
    assert used, f"{title}: no metric in {expr!r}"
    assert used <= metric_names(), f"{title}: not defined by the code: {sorted(used - metric_names())}"


def _events_of_now() -> list:
    """A message that passed the spam stage, one a stage rejected, an SMTP-time refusal: all of now."""
    msg = received(1)
    spam = Result(stage="spam", verdict=Verdict.FAIL, score=7.5, duration_ms=3.0,
                  details={"score": 7.5, "probability": 80.0, "rules": [], "actions": []})
    smtp_reject = sample_events()[-1]  # it has no time of its own: now
    return [msg, StageResult(message_id=msg.message_id, result=spam, message=msg, recipients=["bob@school.test"]),
            Rejected(message_id=msg.message_id, stage="virus", reason="virus found: Eicar", recipients=["carol@school.test"],
                     message=msg), smtp_reject]


@pytest.mark.parametrize(("title", "sql"), SQL, ids=[t for t, _ in SQL])
def test_every_sql_query_runs_on_the_analytics_schema(store: AnalyticsStore, title, sql):
    store.insert(_events_of_now())
    for macro, expansion in MACROS.items():
        sql = re.sub(macro, expansion, sql)
    assert "$" not in sql, f"{title}: a macro the test does not know"
    assert re.search(r"\bpoststelle\.\w+", sql), f"{title}: tables are named with their database"
    columns, rows = store.query(re.sub(r"\bpoststelle\.", f"{store.database}.", sql))
    assert columns and rows, f"{title}: no rows for the events of now"
