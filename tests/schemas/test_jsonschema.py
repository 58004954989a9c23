"""The exported JSON Schema files: committed = generated, and real events validate against them.

`jsonschema` is not a dependency, so a small validator below covers exactly the keywords the
generator emits; it refuses any other keyword, so a generator change cannot slip past it unchecked.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.schemas.test_events import all_events, received
from schemas.events import (
    EVENT_TYPES,
    Deferred,
    Event,
    Verdict,
    encode_event,
    event_type_name,
    version_of,
)
from schemas.jsonschema import DEFAULT_DIRECTORY, DIALECT, export_all, file_name, render_all

JSON_DIR = Path(__file__).resolve().parents[2] / "schemas" / "json"


# ---- a validator for the keywords the generator uses ---------------------------------------

_ANNOTATIONS = {"$schema", "$id", "$defs", "title", "description", "default"}
_TYPES = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


def errors(schema: dict, value: Any, root: dict | None = None, path: str = "$") -> list[str]:
    root = root if root is not None else schema
    found: list[str] = []
    unknown = set(schema) - _ANNOTATIONS - {
        "type", "const", "enum", "properties", "required", "additionalProperties", "items", "anyOf", "$ref"
    }
    assert not unknown, f"validator does not know {unknown} (at {path})"
    if "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/$defs/"), ref
        found += errors(root["$defs"][ref.removeprefix("#/$defs/")], value, root, path)
    if "type" in schema:
        names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_TYPES[n](value) for n in names):
            return found + [f"{path}: {value!r} is not {schema['type']}"]
    if "const" in schema and value != schema["const"]:
        found.append(f"{path}: {value!r} != {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        found.append(f"{path}: {value!r} not in {schema['enum']}")
    if "anyOf" in schema and all(errors(s, value, root, path) for s in schema["anyOf"]):
        found.append(f"{path}: {value!r} matches no alternative")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            found += errors(schema["items"], item, root, f"{path}[{i}]")
    if isinstance(value, dict):
        for name in schema.get("required", []):
            if name not in value:
                found.append(f"{path}.{name}: required")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                found += errors(props[key], item, root, f"{path}.{key}")
            elif extra is False:
                found.append(f"{path}.{key}: not allowed")
            elif isinstance(extra, dict):
                found += errors(extra, item, root, f"{path}.{key}")
    return found


# ---- realistic events -----------------------------------------------------------------------


def sample_events() -> list[Event]:
    """Every event type (the samples of test_events), plus a `deferred` without its optional part."""
    events = all_events()
    deferred = next(e for e in events if isinstance(e, Deferred))
    return [*events, dataclasses.replace(deferred, routed=None)]


def _load(name: str) -> dict:
    return orjson.loads((JSON_DIR / name).read_bytes())


# ---- committed files = generated ------------------------------------------------------------


def test_committed_schema_files_match_the_generator():
    rendered = render_all()
    assert set(rendered) == {file_name(t) for t in EVENT_TYPES}
    drift = []
    for name, text in rendered.items():
        path = JSON_DIR / name
        if not path.exists():
            drift.append(f"{name} is missing")
        elif path.read_text(encoding="utf-8") != text:
            drift.append(f"{name} differs")
    stale = sorted(p.name for p in JSON_DIR.glob("*.json") if p.name not in rendered and not _superseded(p.name))
    assert not drift, (
        f"schemas/json/ is out of date with schemas/events.py ({'; '.join(drift)}): "
        "run `poststelle schemas export` and commit the result"
    )
    assert not stale, f"schemas/json/ holds files of no event type or version: {stale}; delete them"


def _superseded(name: str) -> bool:
    """A kept file of an older version of a known event type (e.g. stage_result.v1.json)."""
    event_type, _, version = name.removesuffix(".json").rpartition(".v")
    return event_type in EVENT_TYPES and version.isdigit() and int(version) < version_of(EVENT_TYPES[event_type])


def test_superseded_versions_are_kept():
    kept = sorted(p.name for p in JSON_DIR.glob("*.json") if _superseded(p.name))
    assert kept == ["deadlettered.v1.json", "outcome.v1.json", "stage_result.v1.json"]


def test_rendering_is_deterministic_and_formatted():
    first, second = render_all(), render_all()
    assert first == second
    for name, text in first.items():
        assert text.endswith("}\n") and not text.endswith("\n\n"), name
        assert "\n  \"$id\"" in text, name  # 2-space indent, keys sorted ($defs/$id first)
        document = orjson.loads(text)
        assert list(document) == sorted(document), name


def test_export_all_writes_every_file(tmp_path):
    paths = export_all(tmp_path / "out")
    rendered = render_all()
    assert sorted(p.name for p in paths) == sorted(rendered)
    for path in paths:
        assert path.parent == tmp_path / "out"
        assert path.read_text(encoding="utf-8") == rendered[path.name]
    assert DEFAULT_DIRECTORY == JSON_DIR


def test_cli_exports_into_a_directory(tmp_path):
    from pipeline.cli import main

    assert main(["schemas", "export", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(render_all())


def test_schema_header_and_shape():
    for event_type, cls in EVENT_TYPES.items():
        doc = _load(file_name(event_type))
        assert doc["$schema"] == DIALECT
        assert doc["$id"].endswith(file_name(event_type).removesuffix(".json"))
        assert doc["title"] == cls.__name__
        assert doc["type"] == "object" and doc["additionalProperties"] is True
        assert doc["properties"]["type"] == {"const": event_type}
        assert {"type", "schema_version"} <= set(doc["required"])
        assert set(doc["properties"]) == {f.name for f in dataclasses.fields(cls)}
        for name, definition in doc.get("$defs", {}).items():
            assert definition["additionalProperties"] is True, name


def test_schema_details_follow_the_type_hints():
    received = _load(file_name("received"))
    assert received["description"].startswith("The ingress accepted a message")
    assert received["properties"]["envelope"] == {"$ref": "#/$defs/Envelope"}
    env = received["$defs"]["Envelope"]
    assert env["required"] == ["mail_from", "rcpt_to"]
    assert env["properties"]["rcpt_to"] == {"type": "array", "items": {"type": "string"}}
    assert env["properties"]["body"] == {"enum": ["7BIT", "8BITMIME", "BINARYMIME"], "default": "7BIT"}
    assert env["properties"]["smtputf8"] == {"type": "boolean", "default": False}
    assert "description" not in env  # no docstring: no invented one from the signature
    assert received["$defs"]["Client"]["properties"]["port"] == {"type": "integer"}

    stage = _load(file_name("stage_result"))
    result = stage["$defs"]["Result"]
    assert result["properties"]["verdict"] == {"type": "string", "enum": [v.value for v in Verdict]}
    assert result["properties"]["details"] == {"type": "object", "default": {}}  # dict[str, Any]
    assert result["properties"]["score"] == {"type": "number", "default": 0.0}
    assert stage["properties"]["history"] == {"type": "array", "items": {"$ref": "#/$defs/Result"},
                                              "default": []}
    assert stage["properties"]["message"] == {"$ref": "#/$defs/Received"}

    deferred = _load(file_name("deferred"))
    assert deferred["properties"]["routed"] == {
        "anyOf": [{"$ref": "#/$defs/Routed"}, {"type": "null"}], "default": None}
    assert deferred["properties"]["reply"] == {"$ref": "#/$defs/Reply"}
    # id and time come from factories: required neither, and no default written down
    assert "default" not in deferred["properties"]["id"]
    assert "id" not in deferred["required"] and "time" not in deferred["required"]


# ---- real events validate -------------------------------------------------------------------


def test_samples_cover_every_event_type():
    assert {event_type_name(type(e)) for e in sample_events()} == set(EVENT_TYPES)


@pytest.mark.parametrize("event", sample_events(), ids=lambda e: event_type_name(type(e)))
def test_encoded_events_validate_against_their_schema(event):
    doc = orjson.loads(encode_event(event))
    schema = _load(file_name(doc["type"]))
    assert errors(schema, doc) == []


def test_validator_catches_bad_documents():
    """The check above could fail: broken events do not validate."""
    schema = _load(file_name("received"))
    good = orjson.loads(encode_event(received()))
    assert errors(schema, good) == []

    missing = {k: v for k, v in good.items() if k != "blob"}
    assert errors(schema, missing) == ["$.blob: required"]

    wrong_type = {**good, "client": {**good["client"], "port": "25"}}
    assert errors(schema, wrong_type) == ["$.client.port: '25' is not integer"]

    bad_literal = {**good, "envelope": {**good["envelope"], "body": "QUOTED"}}
    assert any(e.startswith("$.envelope.body") for e in errors(schema, bad_literal))

    other_type = {**good, "type": "routed"}
    assert errors(schema, other_type) == ["$.type: 'routed' != 'received'"]

    no_version = {k: v for k, v in good.items() if k != "schema_version"}
    assert errors(schema, no_version) == ["$.schema_version: required"]

    # readers ignore unknown fields, at the top and inside parts
    extended = {**good, "future_field": 1, "client": {**good["client"], "asn": 64496}}
    assert errors(schema, extended) == []

    deferred = _load(file_name("deferred"))
    bad_nested = orjson.loads(encode_event(sample_events()[5]))
    bad_nested["routed"]["message"]["blob"]["size"] = -1.5
    found = errors(deferred, bad_nested)
    assert len(found) == 1 and found[0].startswith("$.routed: ") and "matches no alternative" in found[0]
    assert errors(deferred["$defs"]["Routed"], bad_nested["routed"], deferred, "$.routed") == [
        "$.routed.message.blob.size: -1.5 is not integer"]


def test_every_property_of_an_encoded_event_is_declared():
    """Structural check: writers emit no field the schema does not name."""
    for event in sample_events():
        doc = orjson.loads(encode_event(event))
        schema = _load(file_name(doc["type"]))
        assert set(doc) == set(schema["properties"]), doc["type"]
        assert set(schema["required"]) <= set(doc)
