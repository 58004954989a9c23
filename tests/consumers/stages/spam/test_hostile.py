"""Hostile messages and hostile patterns: the shipped rules score them in bounded time, never raise.

RE2 matches in time linear in the text, and every view the rules read is capped
(`consumers.stages.spam.scan`); the built-in tests scan bounded samples. These messages aim at
what would be slow otherwise: megabytes of one line, text made to make backtracking regexes
explode, deep MIME, thousands of parts, links and header fields, broken charsets.
bench/spam_rules.py measures the same messages (figures in docs/performance.md).
"""
from __future__ import annotations

import time

import pytest

from consumers.stages.spam.rules import RuleSet, shipped_rule_files
from tests.consumers.stages.spam.scanning import context, message
from tests.pipeline.mail.test_message import HOSTILE as HOSTILE_TO_THE_PARSER

MB = 1_000_000
HTML = "text/html; charset=utf-8"


def _links(count: int) -> str:
    return " ".join(f'<a href="http://{i}.x{i}.test/p?e=a@b">www.other{i}.test</a>' for i in range(count))


HOSTILE = {
    **HOSTILE_TO_THE_PARSER,
    "5 MB of one line": message(body="a" * 5 * MB),
    "5 MB of one word of letters and digits": message(body="v1" * 2_500_000),
    "exclamation marks": message(subject="!" * 10_000, body="!" * 2 * MB),
    "dollar amounts": message(body="$1 " * 600_000),
    "split letters": message(body="a." * MB),
    "spaced capitals": message(body="A " * MB),
    "capitals": message(subject="A" * 20_000, body="A" * 2 * MB),
    "font tags without end": message(body="<font color=red>" * 200_000, content_type=HTML),
    "comments in words": message(body="a<!--" * 400_000, content_type=HTML),
    "entities": message(body="&#65;" * 400_000, content_type=HTML),
    "5,000 links with mismatched text": message(body=_links(5000), content_type=HTML),
    "a 1 MB URL": message(body="http://x.test/" + "a" * MB),
    "a 1 MB URL host": message(body="http://" + "a." * 500_000 + "test/"),
    "a 2 MB Subject": message(subject="free " * 400_000),
    "10,000 recipients": message(to=", ".join(f"u{i:05}@school.test" for i in range(10_000))),
    "a From of 8 KiB of comments": message(sender="(" * 4000 + "a@b.test" + ")" * 4000),
    "dates of every kind": message(date="Mon, 99 Foo 99999 99:99:99 +9999 " * 1000),
    "5,000 Received fields": message(headers="Received: from x by y; Mon, 02 Jun 2025 10:00:00 +0000\n" * 5000),
    "utf-7 and broken bytes": message(body="+AGEAYQ-" * 200_000, content_type="text/plain; charset=utf-7"),
    "8-bit garbage": message(body="x").replace(b"\r\n\r\nx", b"\r\n\r\n" + bytes(range(256)) * 8000),
    "base64 text of 3 MB": message(body="QUFBQUFB\r\n" * 300_000, headers="Content-Transfer-Encoding: base64\n"),
}


@pytest.fixture(scope="module")
def shipped() -> RuleSet:
    return RuleSet.load(shipped_rule_files())


@pytest.mark.parametrize("name", list(HOSTILE))
def test_the_shipped_rules_score_hostile_messages_in_bounded_time(shipped, name):
    ctx = context(HOSTILE[name])
    started = time.process_time()
    hits = shipped.evaluate(ctx)
    elapsed = time.process_time() - started
    assert elapsed < 2.0, f"{name}: {elapsed:.2f} s"
    assert all(hit.name in shipped.names for hit in hits)


@pytest.mark.parametrize("pattern", [r"(a+)+$", r"(a|aa)+b", r"(.*a){20}x", r"(x+x+)+y", r"^(\w+\s?)*$", r"(a*)*b"])
def test_patterns_that_explode_in_backtracking_engines_run_in_linear_time(tmp_path, pattern):
    path = tmp_path / "bombs.cf"
    path.write_text(f"body BODY /{pattern}/\nrawbody RAW /{pattern}/\nheader SUBJ Subject =~ /{pattern}/\n"
                    f"full FULL /{pattern}/\nuri URI /{pattern}/\n")
    ruleset = RuleSet.load([path])
    ctx = context(message(subject="a" * 60_000, body="a" * 2 * MB + "!"))
    started = time.process_time()
    ruleset.evaluate(ctx)
    assert time.process_time() - started < 2.0
