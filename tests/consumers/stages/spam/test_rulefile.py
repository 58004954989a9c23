"""Rule files: every mistake is refused at load with the file, the line and the reason; overrides work."""
from __future__ import annotations

import pytest

from consumers.stages.spam.rules import RuleFileError, RuleSet
from pipeline.settings import ConfigError
from tests.consumers.stages.spam.scanning import context, fired, message, rules

GOOD = "body GOOD /hello/i\nscore GOOD 1.5\n"


@pytest.mark.parametrize(("text", "line", "reason"), [
    ("bodyy X /a/\n", 1, "unknown directive 'bodyy'"),
    ("# fine\n\nbody X /(?=a)b/\n", 3, "bad regex /(?=a)b/: RE2 does not support it: invalid perl operator: (?="),
    ("body X /(a)\\1/\n", 1, "RE2 does not support it: invalid escape sequence: \\1"),
    ("body X /a/x\n", 1, "regex flag(s) 'x' not supported"),
    ("body X a\n", 1, "expected a regex as /pattern/flags"),
    ("body X /a\n", 1, "the regex has no closing '/'"),
    ("body X //\n", 1, "empty regex"),
    ("body X\n", 1, "body: the rule has no test"),
    ("body 9X /a/\n", 1, "expected a rule name"),
    ("header X Subject ~ /a/\n", 1, "expected =~ or !~ after Subject"),
    ("header X Subject:bogus =~ /a/\n", 1, "expected a header field name"),
    ("header X ALL:addr =~ /a/\n", 1, "ALL has no :addr view"),
    ("header X exists:Subject =~ /a/\n", 1, "exists:FIELD takes no view and nothing after it"),
    ("eval X no_such_test()\n", 1, "unknown built-in test 'no_such_test'"),
    ("eval X subject_caps(10)\n", 1, "subject_caps(min_letters: int, ratio: float): missing a required argument"),
    ("eval X subject_caps(ten, 0.5)\n", 1, "subject_caps: min_letters must be int, got 'ten'"),
    ("eval X subject_caps(10.5, 0.5)\n", 1, "subject_caps: min_letters must be int, got 10.5"),
    ("eval X html_only\n", 1, "expected builtin(arguments)"),
    ("body A /a/\nmeta X A &&\n", 2, "meta: the expression ends too early"),
    ("meta X A || B\nbody A /a/\n", 1, "meta X names unknown rule(s): B"),
    ("body A /a/\nmeta X A + (Y\n", 2, "meta: missing ')'"),
    ("meta X Y && 1\nmeta Y Z\nmeta Z X\n", 1, "meta cycle: X -> Y -> Z -> X"),
    ("meta X !X\n", 1, "meta cycle: X -> X"),
    ("body A /a/\nscore B 1\n", 2, "no rule called B is defined in any rule file"),
    ("body A /a/\ndescribe B text\n", 2, "no rule called B is defined in any rule file"),
    ("body A /a/\nscore A many\n", 2, "score: 'many' is not a number"),
    ("body A /a/\nscore A 1 2 3 4\n", 2, "score takes one number"),
    ("body A /a/\nscore A nan\n", 2, "score nan is out of range"),
    ("body A /a/\nuri A /b/\n", 2, "A is already defined in this file (line 1)"),
])
def test_a_broken_rule_file_is_refused_with_file_line_and_reason(tmp_path, text, line, reason):
    with pytest.raises(RuleFileError) as caught:
        rules(tmp_path, text)
    error = caught.value
    assert isinstance(error, ConfigError)
    assert (error.path, error.line) == (tmp_path / "test.cf", line)
    assert reason in error.reason
    assert str(error) == f"{tmp_path / 'test.cf'}:{line}: {error.reason}"


def test_a_file_that_is_not_utf8_or_missing_is_refused(tmp_path):
    path = tmp_path / "latin1.cf"
    path.write_bytes(b"body A /a/\ndescribe A caf\xe9\n")
    with pytest.raises(RuleFileError, match=r"latin1.cf:2: not UTF-8"):
        RuleSet.load([path])
    with pytest.raises(RuleFileError, match=r"missing.cf:0: cannot read the rule file"):
        RuleSet.load([tmp_path / "missing.cf"])


def test_the_error_names_the_file_that_is_wrong(tmp_path):
    (tmp_path / "a.cf").write_text(GOOD)
    (tmp_path / "b.cf").write_text("body OTHER /x/\nmeta M GOOD && NOPE\n")
    with pytest.raises(RuleFileError) as caught:
        RuleSet.load([tmp_path / "a.cf", tmp_path / "b.cf"])
    assert (caught.value.path.name, caught.value.line) == ("b.cf", 2)


def test_later_files_override_scores_redefine_rules_and_zero_turns_a_rule_off(tmp_path):
    (tmp_path / "shipped.cf").write_text("body A /hello/i\nscore A 1.5\nbody B /world/\nscore B 2\n"
                                         "body C /max/i\ndescribe C greets Max\n")
    (tmp_path / "site.cf").write_text("score A 4\nscore B 0\nbody C /nobody/\n")
    ruleset = RuleSet.load([tmp_path / "shipped.cf", tmp_path / "site.cf"])
    assert ruleset.names == ("A", "C") and len(ruleset) == 2
    hits = ruleset.evaluate(context(message(body="hello world, Max")))
    assert [(h.name, h.score) for h in hits] == [("A", 4.0)]  # C now looks for "nobody"
    assert ruleset.evaluate(context(message(body="hello nobody")))[1].description == "greets Max"


def test_rules_without_a_score_count_one_point_and_sub_rules_count_none(tmp_path):
    ruleset = rules(tmp_path, "body A /hello/\nbody __B /hello/\nmeta C __B\n")
    assert [(h.name, h.score) for h in ruleset.evaluate(context(message(body="hello")))] == [("A", 1.0), ("C", 1.0)]


def test_other_delimiters_and_escaped_slashes(tmp_path):
    ruleset = rules(tmp_path, "uri A m{^https?://x\\.test/a/b}i\nuri B /\\/c\\/d$/\nbody C m!two words!\n")
    ctx = context(message(body="see HTTPS://x.test/a/b and http://y.test/c/d\r\ntwo\r\nwords"))
    assert fired(ruleset, ctx) == ["A", "B", "C"]
