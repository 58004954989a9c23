"""Dataclass <-> JSON (orjson) with type checks from the type hints.

Decoding is tolerant of additions (unknown fields are ignored, so a newer writer does not break an
older reader) and strict about the rest: a missing field without default or a value of the wrong type
raises `DecodeError` with the path of the offending field.
"""
from __future__ import annotations

import dataclasses
import enum
import types
import typing
from functools import cache
from typing import Any, Literal, TypeVar

import orjson

__all__ = ["DecodeError", "from_dict", "to_json", "MAX_DEPTH"]

T = TypeVar("T")
MAX_DEPTH = 32  # nesting deeper than this in an event is refused (a poison event, not a crash)


class DecodeError(ValueError):
    """The payload is not a valid event."""


def to_json(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@cache
def _fields(cls: type) -> tuple[dataclasses.Field, ...]:
    return tuple(f for f in dataclasses.fields(cls) if f.init)


def from_dict(cls: type[T], data: Any, path: str = "$", depth: int = 0) -> T:
    """Build the dataclass `cls` from decoded JSON, checking every field against its type."""
    return _convert(cls, data, path, depth)


def _convert(tp: Any, value: Any, path: str, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise DecodeError(f"{path}: nested deeper than {MAX_DEPTH} levels")
    origin = typing.get_origin(tp)
    if tp is Any:
        _check_depth(value, path, depth)
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise DecodeError(f"{path}: expected an object")
        kwargs = {}
        hints = _hints(tp)
        for f in _fields(tp):
            if f.name in value:
                kwargs[f.name] = _convert(hints[f.name], value[f.name], f"{path}.{f.name}", depth + 1)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise DecodeError(f"{path}.{f.name}: missing")
        return tp(**kwargs)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise DecodeError(f"{path}: expected one of {typing.get_args(tp)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise DecodeError(f"{path}: expected a list")
        (item,) = typing.get_args(tp)
        return [_convert(item, v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise DecodeError(f"{path}: expected an object")
        _, vt = typing.get_args(tp)
        return {k: _convert(vt, v, f"{path}.{k}", depth + 1) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors: list[DecodeError] = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, path, depth)
            except DecodeError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]  # `X | None`: the error of X says what is wrong
        names = ", ".join(getattr(a, "__name__", str(a)) for a in args)
        raise DecodeError(f"{path}: fits none of {names}")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise DecodeError(f"{path}: {value!r} is not a {tp.__name__}") from None
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and type(value) is tp:
        return value
    raise DecodeError(f"{path}: expected {getattr(tp, '__name__', tp)}, got {type(value).__name__}")


def _check_depth(value: Any, path: str, depth: int) -> None:
    """Free-form values (stage details) obey the same nesting limit as typed ones."""
    stack = [(value, depth)]
    while stack:
        item, level = stack.pop()
        if level > MAX_DEPTH:
            raise DecodeError(f"{path}: nested deeper than {MAX_DEPTH} levels")
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
