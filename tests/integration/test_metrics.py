"""The metrics operators expect, on the real stack: every component's /metrics answers, a mail moves
the ingress's and the stages' counters, and `poststelle status` shows each consumer group's lag."""
from __future__ import annotations

import re

import pytest

from pipeline.cli.components import consumer_groups, load_config, metrics_endpoints
from tests.integration.conftest import make_message, new_test_id, send
from tests.virus_samples import mail_with_attachment

pytestmark = pytest.mark.integration
MAX = "max.mustermann@school.test"


def _settings(stack):
    return load_config(stack.env["POSTSTELLE_CONFIG"], environ=stack.env)


def _value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_up_lists_every_components_endpoint_and_each_one_answers(stack):
    endpoints = metrics_endpoints(_settings(stack))
    assert f"metrics: ingress {endpoints['ingress']}" in (stack.home / "up.log").read_text()
    for component in endpoints:
        samples = stack.scrape(component)
        assert ("process_cpu_seconds_total", ()) in samples, f"{component}: not its process's metrics"


def test_a_mail_moves_the_counters_of_the_ingress_and_of_the_stages(stack):
    before_ingress, before_route = stack.scrape("ingress"), stack.scrape("stage:route")
    test_id = new_test_id()
    send(make_message(test_id, subject=f"metrics {test_id}"), [MAX], port=stack.smtp_port)
    stack.wait_for(lambda: stack.test_ids(MAX)[test_id], what="the mail in max's mailbox")

    ingress = stack.scrape("ingress")
    assert _value(ingress, "poststelle_smtp_sessions_total") > _value(before_ingress, "poststelle_smtp_sessions_total")
    assert _value(ingress, "poststelle_smtp_replies_total", code="250") > _value(
        before_ingress, "poststelle_smtp_replies_total", code="250")
    route = stack.scrape("stage:route")
    processed = ("poststelle_records_processed_total", {"component": "stage:route"})
    assert _value(route, processed[0], **processed[1]) > _value(before_route, processed[0], **processed[1])
    assert _value(route, "poststelle_verdicts_total", stage="route", verdict="pass") > _value(
        before_route, "poststelle_verdicts_total", stage="route", verdict="pass")
    assert _value(route, "poststelle_handle_seconds_count", component="stage:route") > 0
    lmtp = stack.scrape("sink:lmtp")
    assert _value(lmtp, "poststelle_deliveries_total", destination="lmtp", result="delivered") > 0
    # the lag gauge is read every few seconds; once read, the route stage has nothing left to do
    prefix = _settings(stack).kafka.topic_prefix
    stack.wait_for(lambda: (lags := [v for (name, labels), v in stack.scrape("stage:route").items()
                                     if name == "poststelle_consumer_lag" and ("group", f"{prefix}.route") in labels])
                   and sum(lags) == 0, timeout=30, what="the route stage's lag read as 0")


def test_status_shows_each_consumer_groups_lag_next_to_its_state(stack):
    done = stack.cli("status")
    groups = consumer_groups(_settings(stack))
    shown = {}
    for line in done.stdout.splitlines():
        found = re.match(r"^(\S+)\s+ready\s+pid=\d+ restarts=\d+ lag=(\d+) metrics=http://\S+/metrics$", line)
        if found:
            shown[found[1]] = int(found[2])
    assert sorted(shown) == sorted(groups), done.stdout
    assert "lag unknown" not in done.stderr


def test_the_digest_service_counts_the_quarantine_entries(stack):
    """A held attachment is a quarantine entry; the digest service's gauge counts it at the next scrape."""
    def entries() -> float:
        return sum(v for (name, _), v in stack.scrape("digest").items() if name == "poststelle_quarantine_entries")

    before = entries()
    test_id = new_test_id()
    program = b"MZ\x90\x00\x03\x00\x00\x00 pretend this is a program " * 20
    send(mail_with_attachment("invoice.exe", program, test_id=test_id, to=MAX), [MAX], port=stack.smtp_port)
    stack.wait_for(lambda: entries() > before, timeout=60, what="one more quarantine entry on digest's /metrics")


def _route_lag(stack) -> int | None:
    found = re.search(r"^stage:route\s+\S+\s+pid=\S+ restarts=\d+ lag=(\d+)", stack.cli("status", check=False).stdout,
                      re.M)
    return int(found[1]) if found else None


def test_a_held_stage_shows_the_mail_waiting_for_it_as_lag(stack):
    stack.hold("stage:route")
    try:
        test_id = new_test_id()
        send(make_message(test_id, subject=f"lag {test_id}"), [MAX], port=stack.smtp_port)  # 250 after the verdict wait
        stack.wait_for(lambda: (_route_lag(stack) or 0) >= 1, timeout=30, what="route's lag of the waiting mail")
    finally:
        stack.release("stage:route")
    stack.wait_for(lambda: stack.test_ids(MAX)[test_id], what="the mail delivered once route is back")
    stack.wait_for(lambda: _route_lag(stack) == 0, timeout=30, what="route's lag back to 0")
