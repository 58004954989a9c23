"""Rule files: SpamAssassin's format where it makes sense, read strictly (docs/spam-rules.md).

`read_rule_files(paths)` reads the files in order into one `RuleBook`: the rule definitions, their
scores and descriptions. A later file may redefine a rule, change its score (`score NAME 0`
turns it off) or its description. Every problem is a `RuleFileError` with the file, the line and
the reason, raised at start-up, never while mail flows: an unknown directive, a bad or
unsupported regex (RE2 has no look-around and no back-references), an unknown built-in or the
wrong arguments for one, a meta expression that does not parse, names an unknown rule or makes a
cycle, a score or description for a rule no file defines, a rule defined twice in one file.
"""
from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import re2

from consumers.stages.spam import signals as _signals  # noqa: F401  (registers the signal built-ins)
from consumers.stages.spam.builtins import BUILTINS
from consumers.stages.spam.meta import Expression, MetaSyntaxError, parse_meta
from pipeline.settings import ConfigError

__all__ = ["RuleFileError", "Where", "Regex", "HeaderTest", "PatternTest", "MetaTest", "EvalTest", "RuleDef",
           "RuleBook", "read_rule_files", "compile_regex", "PATTERN_KINDS", "DEFAULT_SCORE"]

PATTERN_KINDS = ("body", "rawbody", "uri", "uri_domain", "full")
DIRECTIVES = ("header", *PATTERN_KINDS, "meta", "eval", "describe", "score")
DEFAULT_SCORE = 1.0  # a rule without a score line (SpamAssassin's default); sub-rules (`__NAME`) score 0
REGEX_FLAGS = "ims"  # RE2 knows these; SpamAssassin's x, g, o are refused
MULTILINE_KINDS = ("body", "rawbody")  # ^ and $ match at each line (paragraph) of these
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}")
_FIELD = re.compile(r"(exists:)?([!-9;-~]+?)(?::(raw|addr|name))?")
_EVAL = re.compile(r"([a-z_][a-z0-9_]*)\s*\((.*)\)")
_ARGUMENT = re.compile(r"""\s*(?:"([^"]*)"|'([^']*)'|([^\s,'"()]+))\s*(,|$)""")
_CLOSERS = {"{": "}", "(": ")", "[": "]", "<": ">"}
_OPTIONS = re2.Options()
_OPTIONS.log_errors = False


class RuleFileError(ConfigError):
    """A rule file cannot be used: `path`, `line` (1-based; 0: the file as a whole) and `reason`."""

    def __init__(self, path: Path | str, line: int, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}")
        self.path = Path(path)
        self.line = line
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Where:
    path: Path
    line: int

    def error(self, reason: str) -> RuleFileError:
        return RuleFileError(self.path, self.line, reason)


@dataclass(frozen=True, slots=True)
class Regex:
    source: str  # between the delimiters
    flags: str  # of REGEX_FLAGS

    def pattern(self, kind: str) -> str:
        """The RE2 pattern with the flags inline (RE2::Set takes one set of options for all)."""
        flags = "".join(sorted(set(self.flags + ("m" if kind in MULTILINE_KINDS else ""))))
        return f"(?{flags}){self.source}" if flags else self.source


@dataclass(frozen=True, slots=True)
class HeaderTest:
    field: str  # a field name, or ALL, ToCc, EnvelopeFrom
    view: str  # "" (decoded), "raw", "addr", "name"
    regex: Regex | None  # None: the rule tests that the field exists
    negate: bool = False  # !~


@dataclass(frozen=True, slots=True)
class PatternTest:
    regex: Regex


@dataclass(frozen=True, slots=True)
class MetaTest:
    expression: Expression


@dataclass(frozen=True, slots=True)
class EvalTest:
    builtin: str
    args: tuple[str | int | float, ...]


@dataclass(frozen=True, slots=True)
class RuleDef:
    name: str
    kind: str  # header, body, rawbody, uri, uri_domain, full, meta, eval
    test: HeaderTest | PatternTest | MetaTest | EvalTest
    where: Where

    @property
    def sub_rule(self) -> bool:
        """`__NAME`: a part of meta rules, never a hit of its own (SpamAssassin's convention)."""
        return self.name.startswith("__")


@dataclass(frozen=True, slots=True)
class RuleBook:
    """What the files say together: each rule's last definition (in order of first definition),
    its score and its description."""

    rules: tuple[RuleDef, ...]
    scores: dict[str, float] = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)

    def score(self, rule: RuleDef) -> float:
        return self.scores.get(rule.name, 0.0 if rule.sub_rule else DEFAULT_SCORE)


def compile_regex(regex: Regex, kind: str, where: Where):
    """The compiled RE2 pattern; a RuleFileError when RE2 refuses it."""
    try:
        return re2.compile(regex.pattern(kind), _OPTIONS)
    except re2.error as exc:
        reason = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise where.error(f"bad regex /{regex.source}/: RE2 does not support it: {reason}") from None


def _regex(text: str, where: Where) -> Regex:
    """`/re/flags` or `m{re}flags` (any delimiter after m) as SpamAssassin writes them."""
    text = text.strip()
    if text.startswith("/"):
        opener, closer, body = "/", "/", text[1:]
    elif text.startswith("m") and len(text) > 2 and not text[1].isalnum() and not text[1].isspace():
        opener = text[1]
        closer, body = _CLOSERS.get(opener, opener), text[2:]
    else:
        raise where.error(f"expected a regex as /pattern/flags, got {text[:40]!r}")
    end = body.rfind(closer)
    if end < 0:
        raise where.error(f"the regex has no closing {closer!r}")
    source, flags = body[:end], body[end + 1:]
    if not source:
        raise where.error("empty regex")
    unknown = sorted(set(flags) - set(REGEX_FLAGS))
    if unknown:
        raise where.error(f"regex flag(s) {''.join(unknown)!r} not supported (use {', '.join(REGEX_FLAGS)})")
    return Regex(source=source, flags=flags)


def _header(rest: str, where: Where) -> HeaderTest:
    spec, _, test = rest.strip().partition(" ")
    found = _FIELD.fullmatch(spec)
    if not spec or found is None:
        raise where.error(f"expected a header field name, got {spec[:40]!r}")
    exists, name, view = found.group(1), found.group(2), found.group(3) or ""
    if exists:
        if view or test.strip():
            raise where.error("exists:FIELD takes no view and nothing after it")
        return HeaderTest(field=name, view="", regex=None)
    if view in ("addr", "name") and name in ("ALL", "EnvelopeFrom"):
        raise where.error(f"{name} has no :{view} view")
    operator, _, pattern = test.strip().partition(" ")
    if operator not in ("=~", "!~"):
        raise where.error(f"expected =~ or !~ after {spec}, got {operator[:20]!r}")
    return HeaderTest(field=name, view=view, regex=_regex(pattern, where), negate=operator == "!~")


def _argument(text: str) -> str | int | float:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _eval(rest: str, where: Where) -> EvalTest:
    found = _EVAL.fullmatch(rest.strip())
    if found is None:
        raise where.error(f"expected builtin(arguments), got {rest.strip()[:40]!r}")
    name, inner = found.groups()
    if name not in BUILTINS:
        raise where.error(f"unknown built-in test {name!r}")
    args: list[str | int | float] = []
    position = 0
    while inner.strip() and position < len(inner):
        match = _ARGUMENT.match(inner, position)
        if match is None:
            raise where.error(f"cannot read the arguments of {name}: {inner[position:][:30]!r}")
        quoted = match.group(1) if match.group(1) is not None else match.group(2)
        args.append(quoted if quoted is not None else _argument(match.group(3)))
        position = match.end()
    return EvalTest(builtin=name, args=_typed(name, args, where))


def _typed(name: str, args: list[str | int | float], where: Where) -> tuple[str | int | float, ...]:
    """The arguments checked against the built-in's parameters and their annotated types."""
    signature = inspect.signature(BUILTINS[name])
    try:
        signature.bind(None, *args)
    except TypeError as exc:
        wanted = ", ".join(f"{p.name}: {p.annotation}" for p in list(signature.parameters.values())[1:])
        raise where.error(f"{name}({wanted}): {exc}") from None
    converted: list[str | int | float] = []
    for parameter, value in zip(list(signature.parameters.values())[1:], args):
        wanted = str(parameter.annotation)
        if wanted == "str":
            converted.append(str(value))
        elif wanted == "float" and isinstance(value, (int, float)):
            converted.append(float(value))
        elif wanted == "int" and isinstance(value, int):
            converted.append(value)
        else:
            raise where.error(f"{name}: {parameter.name} must be {wanted}, got {value!r}")
    return tuple(converted)


class _Reader:
    """The state of reading the files in order."""

    def __init__(self) -> None:
        self.rules: dict[str, RuleDef] = {}
        self.scores: dict[str, tuple[float, Where]] = {}
        self.descriptions: dict[str, tuple[str, Where]] = {}

    def read(self, path: Path) -> None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise RuleFileError(path, 0, f"cannot read the rule file: {exc.strerror or exc}") from None
        defined_here: dict[str, int] = {}
        for number, raw_line in enumerate(data.splitlines(), 1):
            where = Where(path, number)
            try:
                line = raw_line.decode("utf-8").strip()
            except UnicodeDecodeError as exc:
                raise where.error(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
            if not line or line.startswith("#"):
                continue
            self.line(line, where, defined_here)

    def line(self, line: str, where: Where, defined_here: dict[str, int]) -> None:
        directive, _, rest = line.partition(" ")
        if directive not in DIRECTIVES:
            raise where.error(f"unknown directive {directive[:40]!r} (expected one of {', '.join(DIRECTIVES)})")
        name, _, rest = rest.strip().partition(" ")
        if not _NAME.fullmatch(name):
            raise where.error(f"{directive}: expected a rule name (letters, digits, _), got {name[:40]!r}")
        rest = rest.strip()
        if directive == "score":
            self.scores[name] = (_score(rest, where), where)
            return
        if directive == "describe":
            self.descriptions[name] = (rest, where)
            return
        if name in defined_here:
            raise where.error(f"{name} is already defined in this file (line {defined_here[name]})")
        defined_here[name] = where.line
        self.rules[name] = RuleDef(name=name, kind=directive, test=_test(directive, rest, where), where=where)

    def book(self) -> RuleBook:
        for table in (self.scores, self.descriptions):
            for name, (_, where) in table.items():
                if name not in self.rules:
                    raise where.error(f"no rule called {name} is defined in any rule file")
        _check_metas(self.rules)
        return RuleBook(rules=tuple(self.rules.values()),
                        scores={name: score for name, (score, _) in self.scores.items()},
                        descriptions={name: text for name, (text, _) in self.descriptions.items()})


def _score(rest: str, where: Where) -> float:
    values = rest.split()
    if len(values) != 1:
        raise where.error("score takes one number (SpamAssassin's four score sets are not supported)")
    try:
        score = float(values[0])
    except ValueError:
        raise where.error(f"score: {values[0]!r} is not a number") from None
    if score != score or abs(score) > 10_000:
        raise where.error(f"score {values[0]} is out of range (-10000..10000)")
    return score


def _test(kind: str, rest: str, where: Where) -> HeaderTest | PatternTest | MetaTest | EvalTest:
    if not rest:
        raise where.error(f"{kind}: the rule has no test")
    if kind == "header":
        test = _header(rest, where)
        if test.regex is not None:
            compile_regex(test.regex, kind, where)
        return test
    if kind in PATTERN_KINDS:
        regex = _regex(rest, where)
        compile_regex(regex, kind, where)
        return PatternTest(regex=regex)
    if kind == "meta":
        try:
            return MetaTest(expression=parse_meta(rest))
        except MetaSyntaxError as exc:
            raise where.error(f"meta: {exc}") from None
    return _eval(rest, where)


def _check_metas(rules: dict[str, RuleDef]) -> None:
    """Every name a meta reads is defined, and no meta reads itself through others."""
    metas = {name: rule for name, rule in rules.items() if isinstance(rule.test, MetaTest)}
    for rule in metas.values():
        unknown = [n for n in rule.test.expression.names if n not in rules]  # type: ignore[union-attr]
        if unknown:
            raise rule.where.error(f"meta {rule.name} names unknown rule(s): {', '.join(unknown)}")
    done: set[str] = set()
    for start in metas:
        path: list[str] = []
        on_path: set[str] = set()
        stack = [(start, iter(metas[start].test.expression.names))]  # type: ignore[union-attr]
        path.append(start)
        on_path.add(start)
        while stack:
            name, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                on_path.discard(name)
                done.add(name)
            elif child in on_path:
                cycle = " -> ".join([*path[path.index(child):], child])
                raise metas[child].where.error(f"meta cycle: {cycle}")
            elif child in metas and child not in done:
                stack.append((child, iter(metas[child].test.expression.names)))  # type: ignore[union-attr]
                path.append(child)
                on_path.add(child)


def read_rule_files(paths: Sequence[Path]) -> RuleBook:
    """The rules of `paths`, read in order (see the module docstring); raises RuleFileError."""
    reader = _Reader()
    for path in paths:
        reader.read(Path(path))
    return reader.book()
