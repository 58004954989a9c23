"""Dataclass <-> JSON (orjson) with type checks from the type hints.

Decoding is tolerant of additions (unknown fields are ignored, so a newer writer does not break an
older reader) and strict about the rest: a missing field without default or a value of the wrong type
raises `DecodeError` with the path of the offending field.

Two ways in: `from_dict` checks and builds from JSON already decoded (orjson), and says where a value
is wrong; `json_decoder(cls)` goes from the JSON text straight to `cls` in one pass of msgspec's C
decoder, with the same checks and the same nesting limit, about four times less CPU. It only says
*that* a payload is wrong: a caller hands a refused payload to `from_dict` for the reason, so a
payload is accepted or refused alike on both ways and only the valid ones take the fast one.
"""
from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable
from functools import cache
from typing import Any, Literal, TypeVar

import msgspec
import orjson

__all__ = ["DecodeError", "from_dict", "json_decoder", "plain", "to_json", "MAX_DEPTH"]

T = TypeVar("T")
MAX_DEPTH = 32  # nesting deeper than this in an event is refused (a poison event, not a crash)


class DecodeError(ValueError):
    """The payload is not a valid event."""


def to_json(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)


def plain(obj: Any) -> Any:
    """`obj` (a dataclass, or what holds them) as JSON values: dicts, lists, strings, numbers, as a
    reader of its encoding gets them. A stage's details in the same process thus look as they do in
    the next one; and it is about five times faster than `dataclasses.asdict`."""
    return orjson.loads(to_json(obj))


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@cache
def _fields(cls: type) -> tuple[dataclasses.Field, ...]:
    return tuple(f for f in dataclasses.fields(cls) if f.init)


def from_dict(cls: type[T], data: Any, path: str = "$", depth: int = 0) -> T:
    """Build the dataclass `cls` from decoded JSON, checking every field against its type."""
    try:
        return _converter(cls)(data, depth)
    except _Invalid as exc:
        raise DecodeError(f"{path}{''.join(reversed(exc.where))}: {exc.reason}") from None


# Each type gets a converter made once: a function (value, depth) -> value that checks and builds.
# Where a value is wrong, `_Invalid` carries the reason out and each enclosing field, index or key
# adds its part of the path on the way (paths are only built for the error, not for every value).
Convert = Callable[[Any, int], Any]


class _Invalid(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.where: list[str] = []  # ".field", "[3]": innermost first


_CONVERTERS: dict[Any, Convert] = {}


def _converter(tp: Any) -> Convert:
    try:
        return _CONVERTERS[tp]
    except KeyError:
        pass
    except TypeError:  # an unhashable type form: built each time
        return _make(tp)
    return _make(tp)


def _too_deep() -> _Invalid:
    return _Invalid(f"nested deeper than {MAX_DEPTH} levels")


def _make(tp: Any) -> Convert:
    origin = typing.get_origin(tp)
    if tp is Any:
        def convert(value: Any, depth: int) -> Any:
            if depth > MAX_DEPTH:
                raise _too_deep()
            _check_depth(value, depth)
            return value
    elif dataclasses.is_dataclass(tp):
        convert = _make_dataclass(tp)
    elif origin is Literal:
        convert = _make_literal(typing.get_args(tp))
    elif origin is list:
        convert = _make_list(tp)
    elif origin is dict:
        convert = _make_dict(tp)
    elif origin in (typing.Union, types.UnionType):
        convert = _make_union(typing.get_args(tp))
    elif isinstance(tp, type) and issubclass(tp, enum.Enum):
        convert = _make_enum(tp)
    else:
        convert = _make_scalar(tp)
    try:
        _CONVERTERS.setdefault(tp, convert)
    except TypeError:
        pass
    return convert


def _make_dataclass(tp: type) -> Convert:
    fields: list[tuple[str, Convert, bool]] = []  # filled on first use: a type may refer to itself

    def convert(value: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise _too_deep()
        if not isinstance(value, dict):
            raise _Invalid("expected an object")
        if not fields:
            hints = _hints(tp)
            fields.extend((f.name, _converter(hints[f.name]), f.default is dataclasses.MISSING
                           and f.default_factory is dataclasses.MISSING) for f in _fields(tp))
        kwargs = {}
        inner = depth + 1
        for name, convert_field, required in fields:
            if name in value:
                try:
                    kwargs[name] = convert_field(value[name], inner)
                except _Invalid as exc:
                    exc.where.append(f".{name}")
                    raise
            elif required:
                missing = _Invalid("missing")
                missing.where.append(f".{name}")
                raise missing
        return tp(**kwargs)

    _CONVERTERS[tp] = convert
    return convert


def _make_literal(allowed: tuple[Any, ...]) -> Convert:
    def convert(value: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise _too_deep()
        if value not in allowed:
            raise _Invalid(f"expected one of {allowed}, got {value!r}")
        return value
    return convert


def _make_list(tp: Any) -> Convert:
    (item,) = typing.get_args(tp)
    convert_item = _converter(item)

    def convert(value: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise _too_deep()
        if not isinstance(value, list):
            raise _Invalid("expected a list")
        out = []
        inner = depth + 1
        for i, v in enumerate(value):
            try:
                out.append(convert_item(v, inner))
            except _Invalid as exc:
                exc.where.append(f"[{i}]")
                raise
        return out
    return convert


def _make_dict(tp: Any) -> Convert:
    convert_value = _converter(typing.get_args(tp)[1])

    def convert(value: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise _too_deep()
        if not isinstance(value, dict):
            raise _Invalid("expected an object")
        out = {}
        inner = depth + 1
        for k, v in value.items():
            try:
                out[k] = convert_value(v, inner)
            except _Invalid as exc:
                exc.where.append(f".{k}")
                raise
        return out
    return convert


def _make_union(args: tuple[Any, ...]) -> Convert:
    optional = type(None) in args
    choices = [(a, _converter(a)) for a in args if a is not type(None)]
    names = ", ".join(getattr(a, "__name__", str(a)) for a in args)

    def convert(value: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise _too_deep()
        if value is None and optional:
            return None
        errors: list[_Invalid] = []
        for _, convert_choice in choices:
            try:
                return convert_choice(value, depth)
            except _Invalid as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]  # `X | None`: the error of X says what is wrong
        raise _Invalid(f"fits none of {names}")
    return convert


def _make_enum(tp: type[enum.Enum]) -> Convert:
    def convert(value: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise _too_deep()
        try:
            return tp(value)
        except ValueError:
            raise _Invalid(f"{value!r} is not a {tp.__name__}") from None
    return convert


def _make_scalar(tp: Any) -> Convert:
    name = getattr(tp, "__name__", tp)
    exact = tp if tp in (int, str, bool) else None

    def convert(value: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise _too_deep()
        if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if exact is not None and type(value) is exact:
            return value
        raise _Invalid(f"expected {name}, got {type(value).__name__}")
    return convert


def _check_depth(value: Any, depth: int) -> None:
    """Free-form values (stage details) obey the same nesting limit as typed ones: nothing may sit
    deeper than `MAX_DEPTH`. Only containers are visited; a non-empty one at the limit fails."""
    if depth > MAX_DEPTH:
        raise _too_deep()
    stack = [(value, depth)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        if not children:
            continue
        if level >= MAX_DEPTH:  # its children sit deeper than the limit
            raise _too_deep()
        stack.extend((child, level + 1) for child in children if isinstance(child, (dict, list)))


# ---- straight from JSON (msgspec) -----------------------------------------------------------------

@cache
def json_decoder(cls: type[T]) -> Callable[[bytes | str], T | None] | None:
    """A decoder from JSON text to `cls` that returns None for a payload it refuses (for any reason
    `from_dict` would, and a few more: a caller asks `from_dict` why); None when msgspec cannot
    express the type (e.g. a union of two dataclasses)."""
    try:
        decoder = msgspec.json.Decoder(cls)
        guard = _depth_guard(cls, frozenset())
    except TypeError:
        return None

    def decode(payload: bytes | str) -> T | None:
        try:
            value = decoder.decode(payload)
        except (msgspec.DecodeError, RecursionError):
            return None
        if guard is not None:
            try:
                guard(value, 0)
            except _Invalid:
                return None
        return value
    return decode


DepthGuard = Callable[[Any, int], None]


def _depth_guard(tp: Any, seen: frozenset[Any]) -> DepthGuard | None:
    """What enforces `MAX_DEPTH` on the free-form (`Any`) values inside a value of type `tp`, at the
    depths `from_dict` counts; None when `tp` holds none (typed values nest only as deep as their
    type, far less than the limit)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return _check_depth
    if dataclasses.is_dataclass(tp):
        if tp in seen:  # a type that holds itself: check every level
            raise TypeError(f"recursive type {tp!r}")
        hints = _hints(tp)
        guards = [(f.name, g) for f in _fields(tp) if (g := _depth_guard(hints[f.name], seen | {tp}))]
        if not guards:
            return None

        def dataclass_guard(value: Any, depth: int) -> None:
            for name, guard in guards:
                guard(getattr(value, name), depth + 1)
        return dataclass_guard
    if origin in (list, dict):
        item = _depth_guard(typing.get_args(tp)[-1], seen)
        if item is None:
            return None

        def container_guard(value: Any, depth: int) -> None:
            for v in (value.values() if isinstance(value, dict) else value):
                item(v, depth + 1)
        return container_guard
    if origin in (typing.Union, types.UnionType):
        choices = [g for a in typing.get_args(tp) if a is not type(None) and (g := _depth_guard(a, seen))]
        if not choices:
            return None
        if len(choices) > 1:
            raise TypeError(f"more than one guarded choice in {tp!r}")
        (choice,) = choices

        def optional_guard(value: Any, depth: int) -> None:
            if value is not None:
                choice(value, depth)
        return optional_guard
    return None
