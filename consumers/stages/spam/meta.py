"""Meta rule expressions: boolean and arithmetic over other rules, parsed once into a small tree.

The grammar is SpamAssassin's meta syntax without Perl: rule names (1 when the rule fired, else 0),
numbers, `!`, unary `-`, `+`, `-`, the comparisons `<`, `<=`, `>`, `>=`, `==`, `!=`, `&&`, `||` and
parentheses, with C's precedence (`||` lowest, then `&&`, comparisons, `+ -`, unary). A meta rule
fires when its expression is not 0. Nothing is passed to `eval`: the tree is evaluated here, so a
rule file can never run code.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = ["MetaSyntaxError", "Expression", "parse_meta"]

_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d+)?)|([A-Za-z_][A-Za-z0-9_]*)|(&&|\|\||<=|>=|==|!=|[!<>+\-()]))")
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b, "!=": lambda a, b: a != b}
MAX_DEPTH = 64  # nesting of parentheses and operators: a file cannot make the parser recurse without end

Values = Mapping[str, float]
Node = Callable[[Values], float]


class MetaSyntaxError(ValueError):
    """The expression is not valid; the text says where."""


@dataclass(frozen=True, slots=True)
class Expression:
    text: str
    names: tuple[str, ...]  # the rules it reads, in order of first use
    evaluate: Node

    def fires(self, values: Values) -> bool:
        return self.evaluate(values) != 0


def _tokens(text: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    position = 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if match is None:
            raise MetaSyntaxError(f"unexpected {text[position:].strip()[:20]!r} at character {position + 1}")
        number, name, operator = match.groups()
        found.append(("number", number) if number else ("name", name) if name else ("op", operator))
        position = match.end()
    return found


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.at = 0
        self.names: dict[str, None] = {}
        self.depth = 0

    def peek(self) -> str:
        return self.tokens[self.at][1] if self.at < len(self.tokens) else ""

    def take(self) -> tuple[str, str]:
        if self.at >= len(self.tokens):
            raise MetaSyntaxError("the expression ends too early")
        self.at += 1
        return self.tokens[self.at - 1]

    def chain(self, operators: tuple[str, ...], operand: Callable[[], Node]) -> list[tuple[str, Node]]:
        """operand (op operand)*, as a flat list: a long chain makes no deep tree to evaluate."""
        found = [("", operand())]
        while self.peek() in operators and self.tokens[self.at][0] == "op":
            operator = self.take()[1]
            found.append((operator, operand()))
        return found

    def either(self) -> Node:
        nodes = [node for _, node in self.chain(("||",), self.both)]
        return nodes[0] if len(nodes) == 1 else lambda v: float(any(n(v) != 0 for n in nodes))

    def both(self) -> Node:
        nodes = [node for _, node in self.chain(("&&",), self.compare)]
        return nodes[0] if len(nodes) == 1 else lambda v: float(all(n(v) != 0 for n in nodes))

    def compare(self) -> Node:
        left = self.sum()
        if self.peek() in _COMPARE:
            test = _COMPARE[self.take()[1]]
            right = self.sum()
            if self.peek() in _COMPARE:
                raise MetaSyntaxError("comparisons do not chain: use parentheses and &&")
            return lambda v: float(test(left(v), right(v)))
        return left

    def sum(self) -> Node:
        terms = self.chain(("+", "-"), self.unary)
        if len(terms) == 1:
            return terms[0][1]
        signed = [(-1.0 if op == "-" else 1.0, node) for op, node in terms]
        return lambda v: sum(sign * node(v) for sign, node in signed)

    def unary(self) -> Node:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise MetaSyntaxError(f"nested deeper than {MAX_DEPTH}")
        try:
            if self.peek() == "!" and self.tokens[self.at][0] == "op":
                self.take()
                inner = self.unary()
                return lambda v: float(inner(v) == 0)
            if self.peek() == "-" and self.tokens[self.at][0] == "op":
                self.take()
                inner = self.unary()
                return lambda v: -inner(v)
            return self.primary()
        finally:
            self.depth -= 1

    def primary(self) -> Node:
        kind, text = self.take()
        if kind == "number":
            value = float(text)
            return lambda v: value
        if kind == "name":
            self.names[text] = None
            return lambda v: v.get(text, 0.0)
        if text == "(":
            inner = self.either()
            if self.peek() != ")":
                raise MetaSyntaxError("missing ')'")
            self.take()
            return inner
        raise MetaSyntaxError(f"unexpected {text!r}")


def parse_meta(text: str) -> Expression:
    """The expression of a meta rule; raises MetaSyntaxError saying what is wrong."""
    parser = _Parser(text)
    if not parser.tokens:
        raise MetaSyntaxError("empty expression")
    node = parser.either()
    if parser.at < len(parser.tokens):
        raise MetaSyntaxError(f"unexpected {parser.peek()!r} after a complete expression")
    return Expression(text=text, names=tuple(parser.names), evaluate=node)
