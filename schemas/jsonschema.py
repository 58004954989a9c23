"""JSON Schema (draft 2020-12) of the events, generated from the dataclass type hints.

One self-contained file per event type and version, ``schemas/json/<type>.v<version>.json``: the
event's fields as ``properties``, nested dataclasses under ``$defs``. The current version of each
type is generated; the file of a version it superseded stays as it was (old events on the topics
still have that shape, and `decode_event` upgrades them). The schema describes what
`schemas.events.decode_event` accepts:

- ``required`` lists the fields without a default, plus ``type`` and ``schema_version``, which
  `decode_event` reads before anything else;
- every object allows additional properties, because readers ignore fields they do not know (a
  newer writer must not break an older reader).

The output is deterministic (sorted keys, 2-space indent, trailing newline), so the committed files
can be compared with a fresh rendering: ``poststelle schemas export`` rewrites them.
"""
from __future__ import annotations

import dataclasses
import enum
import inspect
import types
import typing
from pathlib import Path
from typing import Any, Literal

import orjson

from schemas.events import EVENT_TYPES, Event, event_type_name, version_of

__all__ = ["DIALECT", "ID_BASE", "DEFAULT_DIRECTORY", "schema_for", "file_name", "render_all", "export_all"]

DIALECT = "https://json-schema.org/draft/2020-12/schema"
ID_BASE = "urn:poststelle:schema:"
DEFAULT_DIRECTORY = Path(__file__).resolve().parent / "json"
# fields every event needs although they have defaults: decode_event dispatches on them
_ALWAYS_REQUIRED = ("type", "schema_version")

_SCALARS: dict[Any, dict[str, Any]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    type(None): {"type": "null"},
}


def file_name(event_type: str) -> str:
    """The file of the current version of `event_type`."""
    return f"{event_type}.v{version_of(EVENT_TYPES[event_type])}.json"


def _description(cls: type) -> str:
    """The class docstring, or "" (dataclasses invent one from the signature when there is none)."""
    doc = cls.__doc__ or ""
    if not doc or doc.startswith(f"{cls.__name__}("):
        return ""
    return inspect.cleandoc(doc)


def _json_default(f: dataclasses.Field) -> tuple[bool, Any]:
    """(True, value) when the field's default can be written down in the schema."""
    if f.default is not dataclasses.MISSING:
        value = f.default
        if isinstance(value, enum.Enum):
            value = value.value
        if value is None or isinstance(value, (str, int, float, bool)):
            return True, value
        return False, None
    if f.default_factory is list:  # type: ignore[comparison-overlap]
        return True, []
    if f.default_factory is dict:  # type: ignore[comparison-overlap]
        return True, {}
    return False, None  # factories with a fresh value each time (ids, times, nested parts)


class _Builder:
    """Builds one event's schema, collecting the nested dataclasses in `defs`."""

    def __init__(self) -> None:
        self.defs: dict[str, dict[str, Any]] = {}

    def type_schema(self, tp: Any) -> dict[str, Any]:
        if tp is Any:
            return {}
        if tp in _SCALARS:
            return dict(_SCALARS[tp])
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin is Literal:
            values = [a.value if isinstance(a, enum.Enum) else a for a in args]
            return {"const": values[0]} if len(values) == 1 else {"enum": values}
        if origin is list:
            (item,) = args
            return {"type": "array", "items": self.type_schema(item)}
        if origin is dict:
            key, value = args
            if key is not str:
                raise TypeError(f"JSON objects have string keys, not {key!r}")
            schema: dict[str, Any] = {"type": "object"}
            value_schema = self.type_schema(value)
            if value_schema:
                schema["additionalProperties"] = value_schema
            return schema
        if origin in (typing.Union, types.UnionType):
            return {"anyOf": [self.type_schema(a) for a in args]}
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            values = [m.value for m in tp]
            schema = {"enum": values}
            if issubclass(tp, str):
                schema = {"type": "string", **schema}
            return schema
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            name = tp.__name__
            if name not in self.defs:
                self.defs[name] = {}  # placeholder first: nested types may refer back
                self.defs[name] = self.object_schema(tp)
            return {"$ref": f"#/$defs/{name}"}
        raise TypeError(f"no JSON Schema for type {tp!r}")

    def object_schema(self, cls: type, always_required: tuple[str, ...] = ()) -> dict[str, Any]:
        hints = typing.get_type_hints(cls)
        properties: dict[str, Any] = {}
        required: list[str] = []
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            prop = self.type_schema(hints[f.name])
            has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            if not has_default or f.name in always_required:
                required.append(f.name)
            else:
                known, value = _json_default(f)
                if known:
                    prop = {**prop, "default": value}
            properties[f.name] = prop
        schema: dict[str, Any] = {
            "type": "object",
            "title": cls.__name__,
            "properties": properties,
            "additionalProperties": True,
        }
        if required:
            schema["required"] = required
        description = _description(cls)
        if description:
            schema["description"] = description
        return schema


def schema_for(cls: type[Event]) -> dict[str, Any]:
    """The JSON Schema document of one event class."""
    name = event_type_name(cls)
    builder = _Builder()
    schema = builder.object_schema(cls, always_required=_ALWAYS_REQUIRED)
    document: dict[str, Any] = {
        "$schema": DIALECT,
        "$id": f"{ID_BASE}{name}.v{version_of(cls)}",
        **schema,
    }
    if builder.defs:
        document["$defs"] = builder.defs
    return document


def _render(document: dict[str, Any]) -> str:
    return orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode("utf-8") + "\n"


def render_all() -> dict[str, str]:
    """File name -> file text for every event type, without writing anything."""
    return {file_name(name): _render(schema_for(cls)) for name, cls in sorted(EVENT_TYPES.items())}


def export_all(directory: str | Path | None = None) -> list[Path]:
    """Write every event's schema file into `directory` (default: `schemas/json/`); return the paths."""
    target = Path(directory) if directory is not None else DEFAULT_DIRECTORY
    target.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in render_all().items():
        path = target / name
        path.write_text(text, encoding="utf-8", newline="\n")
        paths.append(path)
    return paths
