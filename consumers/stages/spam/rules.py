"""The compiled rule set: every rule of the rule files, compiled once, evaluated per message.

`RuleSet.load(paths)` reads the files (`rulefile.read_rule_files`: a broken file raises
`RuleFileError` with file, line and reason) and compiles them. The patterns of each kind that
reads one text per message (body, rawbody, full) or a few short ones (uri, uri_domain) go into one
RE2::Set, which finds every rule of the kind that matches in a single pass over the text, whatever
the number of rules; so do the header rules that read the same field view (`Subject`,
`From:addr`). RE2 runs in time linear in the text, without backtracking, and the texts are capped
(`consumers.stages.spam.scan`), so no message can make a pattern slow.

`RuleSet.evaluate(ctx)` answers the rules that fired with a non-zero score, meta rules included,
in the order of the files. Only rules that can count are evaluated: those with a score, and the
rules their metas read. A built-in test that raises is logged and counts as not fired, so one
faulty heuristic costs its own score, not the message.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import re2

from consumers.stages.spam.builtins import BUILTINS
from consumers.stages.spam.context import ScanContext
from consumers.stages.spam.rulefile import (
    PATTERN_KINDS,
    EvalTest,
    HeaderTest,
    MetaTest,
    RuleBook,
    RuleDef,
    Regex,
    RuleFileError,
    read_rule_files,
)
from consumers.stages.spam.scan import Scan
from pipeline.mail.message import ContentNotParsed

__all__ = ["RuleSet", "Hit", "RuleFileError", "SHIPPED_RULES_DIR", "shipped_rule_files", "SET_MAX_MEM"]

log = logging.getLogger(__name__)

SHIPPED_RULES_DIR = Path(__file__).resolve().parents[3] / "deploy" / "spam" / "rules"
SET_MAX_MEM = 64 << 20  # RE2 memory budget of each kind's set (its DFA cache; used only as needed)


def shipped_rule_files() -> list[Path]:
    """The rule files shipped with poststelle (deploy/spam/rules/*.cf), in name order."""
    return sorted(SHIPPED_RULES_DIR.glob("*.cf"))


@dataclass(frozen=True, slots=True)
class Hit:
    name: str
    score: float
    description: str


class _PatternSet:
    """Patterns of one kind in one RE2::Set: one pass per text finds every one that matches."""

    def __init__(self, kind: str, rules: list[tuple[RuleDef, Regex]]) -> None:
        options = re2.Options()
        options.log_errors = False
        options.max_mem = SET_MAX_MEM
        self.kind = kind
        self.names: list[str] = []
        self.set = re2.Set.SearchSet(options)
        for rule, regex in rules:
            try:
                self.set.Add(regex.pattern(kind))
            except re2.error:
                raise rule.where.error(f"RE2 cannot add /{regex.source}/ to the {kind} set") from None
            self.names.append(rule.name)
        if self.names:
            self.set.Compile()

    def matching(self, texts: Iterable[bytes]) -> set[str]:
        found: set[str] = set()
        if not self.names:
            return found
        for text in texts:
            found.update(self.names[i] for i in self.set.Match(text) or ())
            if len(found) == len(self.names):
                break
        return found


class _HeaderGroup:
    """The regex header rules that read one field view (`Subject`, `From:addr`, ...): one set."""

    def __init__(self, field: str, view: str, rules: list[RuleDef]) -> None:
        self.field, self.view = field, view
        self.patterns = _PatternSet("header", [(r, r.test.regex) for r in rules])  # type: ignore[union-attr]
        self.negated = {r.name for r in rules if r.test.negate}  # type: ignore[union-attr]

    def fired(self, scan: Scan) -> set[str]:
        matched = self.patterns.matching((scan.header(self.field, self.view).encode("utf-8", "surrogatepass"),))
        return (matched - self.negated) | (self.negated - matched)


class RuleSet:
    """Compiled rules (see the module docstring)."""

    def __init__(self, book: RuleBook) -> None:
        self.book = book
        by_name = {rule.name: rule for rule in book.rules}
        counting = [r for r in book.rules if not r.sub_rule and book.score(r) != 0]
        needed = _with_dependencies(counting, by_name)
        self._counting = [(r.name, book.score(r), book.descriptions.get(r.name, "")) for r in counting]
        self._sets = [_PatternSet(kind, [(r, r.test.regex) for r in needed if r.kind == kind])  # type: ignore[union-attr]
                      for kind in PATTERN_KINDS]
        headers = [r for r in needed if isinstance(r.test, HeaderTest)]
        self._exists = [(r.name, r.test.field) for r in headers if r.test.regex is None]  # type: ignore[union-attr]
        views: dict[tuple[str, str], list[RuleDef]] = {}
        for rule in headers:
            if rule.test.regex is not None:  # type: ignore[union-attr]
                views.setdefault((rule.test.field, rule.test.view), []).append(rule)  # type: ignore[union-attr]
        self._headers = [_HeaderGroup(field, view, group) for (field, view), group in views.items()]
        self._evals = [(r.name, BUILTINS[r.test.builtin], r.test.args) for r in needed if isinstance(r.test, EvalTest)]
        self._metas = _meta_order([r for r in needed if isinstance(r.test, MetaTest)], by_name)

    @classmethod
    def load(cls, paths: Sequence[Path]) -> RuleSet:
        """The rules of the files in order (later files override scores and rules of earlier ones);
        raises RuleFileError with file, line and reason."""
        return cls(read_rule_files(paths))

    @property
    def names(self) -> tuple[str, ...]:
        """The rules that can hit (a non-zero score, not a `__` sub-rule), in file order."""
        return tuple(name for name, _, _ in self._counting)

    def __len__(self) -> int:
        return len(self._counting)

    def evaluate(self, ctx: ScanContext) -> list[Hit]:
        """The rules that fired, with their scores and descriptions, in file order."""
        scan = Scan(ctx)
        fired: dict[str, float] = {}
        texts = {"body": lambda: (scan.body,), "rawbody": lambda: (scan.rawbody,), "full": lambda: (scan.full,),
                 "uri": lambda: scan.urls, "uri_domain": lambda: scan.link_domains}
        for pattern_set in self._sets:
            if pattern_set.names:
                fired.update(dict.fromkeys(pattern_set.matching(texts[pattern_set.kind]()), 1.0))
        for group in self._headers:
            fired.update(dict.fromkeys(group.fired(scan), 1.0))
        for name, field in self._exists:
            if scan.has_field(field):
                fired[name] = 1.0
        for name, function, args in self._evals:
            try:
                if function(scan, *args):
                    fired[name] = 1.0
            except ContentNotParsed:
                raise
            except Exception:
                log.warning("spam rule %s: built-in %s failed on message %s", name, function.__name__,
                            ctx.received.message_id, exc_info=True)
        for name, expression in self._metas:
            if expression.fires(fired):
                fired[name] = 1.0
        return [Hit(name, score, description) for name, score, description in self._counting if name in fired]


def _with_dependencies(counting: list[RuleDef], by_name: dict[str, RuleDef]) -> list[RuleDef]:
    """`counting` and every rule their metas read, directly or through other metas, in file order."""
    needed: set[str] = set()
    stack = [r.name for r in counting]
    while stack:
        name = stack.pop()
        if name in needed:
            continue
        needed.add(name)
        test = by_name[name].test
        if isinstance(test, MetaTest):
            stack.extend(test.expression.names)
    return [rule for name, rule in by_name.items() if name in needed]


def _meta_order(metas: list[RuleDef], by_name: dict[str, RuleDef]) -> list[tuple[str, object]]:
    """The metas so that each comes after the metas it reads (the files have no cycles)."""
    order: list[tuple[str, object]] = []
    placed: set[str] = set()
    pending = {rule.name for rule in metas}

    def place(name: str) -> None:
        stack = [(name, iter(by_name[name].test.expression.names))]  # type: ignore[union-attr]
        while stack:
            current, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                if current not in placed:
                    placed.add(current)
                    order.append((current, by_name[current].test.expression))  # type: ignore[union-attr]
            elif child in pending and child not in placed:
                stack.append((child, iter(by_name[child].test.expression.names)))  # type: ignore[union-attr]

    for rule in metas:
        place(rule.name)
    return order
