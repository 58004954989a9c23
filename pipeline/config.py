"""Loading the configuration: one TOML file, every key overridable from the environment, validated at start.

The file is read into frozen dataclasses. Every key has a type; an unknown key or a value of the
wrong form raises `ConfigError` naming the key (``ingress.port``) and the expected form, so a typo
stops a process at start instead of being silently ignored.

Environment overrides use ``POSTSTELLE_<SECTION>__<KEY>`` (double underscore between levels), e.g.
``POSTSTELLE_INGRESS__PORT=2526`` or ``POSTSTELLE_STAGES__ROUTE__LOCAL_DESTINATION=lmtp``. Values are
parsed as TOML values when they parse (``25``, ``true``, ``["a", "b"]``) and taken as strings
otherwise; lists also accept ``a,b``. ``POSTSTELLE_HOME`` sets ``paths.home`` and
``POSTSTELLE_CONFIG`` names the file.

The sections themselves are the dataclasses of `pipeline.settings`. Stages and checks declare their
own settings dataclasses (``[stages.<name>]``, ``[checks.<name>]``); the loader validates those
sections against the types the registry hands it (`pipeline.registry`).
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.destination_settings import (
    DEFAULT_DESTINATIONS,
    DestinationSettings,
    check_destination_name,
    default_destination,
)
from pipeline.settings import SINKS, ConfigError, Settings, parse_duration

__all__ = ["load_settings", "raw_config", "parse_section", "ENV_PREFIX"]

ENV_PREFIX = "POSTSTELLE_"
# environment variables with the prefix that are not config keys
_ENV_NOT_KEYS = {"POSTSTELLE_HOME", "POSTSTELLE_CONFIG", "POSTSTELLE_INSTANCE", "POSTSTELLE_LOG_LEVEL",
                 "POSTSTELLE_TEST_BASE", "POSTSTELLE_SCREENSHOTS", "POSTSTELLE_EVENT_LOOP",
                 "POSTSTELLE_GC"}


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is dict:
        return f"a table (name = {_type_name(typing.get_args(tp)[1])})"
    if typing.get_origin(tp) is list:
        item = typing.get_args(tp)[0]
        plural = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}.get(item, "values")
        return f"a list of {plural}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _coerce(key: str, tp: Any, value: Any) -> Any:
    """Check `value` against the field type `tp`, converting only where lossless."""
    origin = typing.get_origin(tp)
    if origin is dict:  # a table of plain values ({ingress = 2})
        value_tp = typing.get_args(tp)[1]
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        return {str(k): _coerce(f"{key}.{k}", value_tp, v) for k, v in value.items()}
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        if dataclasses.is_dataclass(item_tp):  # an array of tables ([[checks.x.rules]])
            return [parse_section(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return [_coerce(f"{key}[{i}]", item_tp, v) for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"unsupported settings type for {key}")  # keep settings types simple
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def parse_section(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    """Build the dataclass `cls` from `data`, refusing unknown keys and ill-typed values."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix}: expected a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    # `stages` is parsed by the caller against the stage registry; `source` is not a key
    handled_elsewhere = {"stages", "checks", "destinations"} if cls is Settings else set()
    fields = {f.name for f in dataclasses.fields(cls)} - {"source", "stage_timeouts"}
    moved: Mapping[str, str] = getattr(cls, "MOVED_KEYS", {})  # keys a section no longer has, and where they went
    values: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else key
        if key in moved:
            raise ConfigError(f"{full}: no longer a key here: {moved[key]}")
        if key not in fields:
            raise ConfigError(f"{full}: unknown key (known here: {', '.join(sorted(fields))})")
        if key in handled_elsewhere:
            continue
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            values[key] = parse_section(tp, value, full)
        else:
            values[key] = _coerce(full, tp, value)
    return cls(**values)


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Turn POSTSTELLE_A__B__C=value into {"a": {"b": {"c": value}}}."""
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name in _ENV_NOT_KEYS:
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX):].split("__")]
        if not all(path):
            raise ConfigError(f"{name}: expected POSTSTELLE_<SECTION>__<KEY>")
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{name}: conflicts with another override")
        node[path[-1]] = _parse_env_value(raw)
    if "POSTSTELLE_HOME" in environ:
        tree.setdefault("paths", {})["home"] = environ["POSTSTELLE_HOME"]
    return tree


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def _fix_list_strings(cls: type, data: dict[str, Any]) -> None:
    """Env values for list fields may be written `a,b`: split those in place."""
    hints = typing.get_type_hints(cls)
    for key, value in list(data.items()):
        tp = hints.get(key)
        if tp is None:
            continue
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            _fix_list_strings(tp, value)
        elif typing.get_origin(tp) is list and isinstance(value, str):
            data[key] = [item.strip() for item in value.split(",") if item.strip()]


def _read_file(path: str | Path | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def raw_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The config file's tables with the environment overrides merged in, not yet validated."""
    environ = os.environ if environ is None else environ
    return _merge(_read_file(path or environ.get("POSTSTELLE_CONFIG")), _env_overrides(environ))


def load_settings(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    stage_types: Mapping[str, type] | None = None,
    check_types: Mapping[str, type] | None = None,
) -> Settings:
    """Read the config file (if any), apply environment overrides, validate everything.

    `stage_types` and `check_types` map stage and check names to their settings dataclasses; they
    default to every registered stage and check (see `pipeline.registry`; the composition root,
    `pipeline.cli.components`, registers the built-in ones). Stages of the topology without a
    section get their defaults.
    """
    environ = os.environ if environ is None else environ
    path = path or environ.get("POSTSTELLE_CONFIG")
    data = _read_file(path)
    if stage_types is None or check_types is None:
        from pipeline.registry import CHECKS, STAGES

        stage_types = STAGES.settings_types() if stage_types is None else stage_types
        check_types = CHECKS.settings_types() if check_types is None else check_types
    overrides = _env_overrides(environ)
    _fix_list_strings(Settings, overrides)  # env values may write lists as "a,b"
    for name, section in overrides.get("stages", {}).items():
        if name in stage_types and isinstance(section, dict):
            _fix_list_strings(stage_types[name], section)
    for name, section in overrides.get("checks", {}).items():
        if name in check_types and isinstance(section, dict):
            _fix_list_strings(check_types[name], section)
    for section in overrides.get("destinations", {}).values():
        if isinstance(section, dict):
            _fix_list_strings(DestinationSettings, section)
    data = _merge(data, overrides)
    settings = parse_section(Settings, data, "")
    settings = dataclasses.replace(settings, destinations=_destinations(settings, data.get("destinations", {})))
    if "sinks" not in data.get("supervisor", {}):  # not chosen: every destination's sink, and analytics
        supervisor = dataclasses.replace(settings.supervisor, sinks=[*settings.destinations, *SINKS])
        settings = dataclasses.replace(settings, supervisor=supervisor)
    stage_sections, stage_timeouts = _stage_timeouts(data.get("stages", {}))
    stages = _parse_named_sections("stages", "stage", stage_sections, stage_types)
    checks = _parse_named_sections("checks", "check", data.get("checks", {}), check_types)
    for key, names in (("ingress.checks", settings.ingress.checks), ("submission.checks", settings.submission.checks)):
        for name in names:
            if name not in check_types:
                known = ", ".join(sorted(check_types)) or "none"
                raise ConfigError(f"{key}: unknown check {name!r} (known: {known})")
            checks.setdefault(name, check_types[name]())
        if len(set(names)) != len(names):
            raise ConfigError(f"{key}: a check is named twice")
        if "relay" not in names:  # without it the listener would be an open relay
            raise ConfigError(f"{key}: the relay check is required")
    for name in settings.topology.stages:
        if name not in stage_types:
            known = ", ".join(sorted(stage_types)) or "none"
            raise ConfigError(f"topology.stages: unknown stage {name!r} (known: {known})")
        stages.setdefault(name, stage_types[name]())
    if len(set(settings.topology.stages)) != len(settings.topology.stages):
        raise ConfigError("topology.stages: a stage is named twice")
    _check_consistency(settings)
    settings = dataclasses.replace(settings, stages=stages, checks=checks, stage_timeouts=stage_timeouts,
                                   source=str(path or ""))
    for section in stages.values():  # rules of a stage's section that need the rest of the config
        check = getattr(section, "check_against", None)
        if check is not None:
            check(settings)
    return settings


def _destinations(settings: Settings, data: Any) -> dict[str, DestinationSettings]:
    """[destinations.<name>] sections, after the defaults lmtp and smarthost (built from [sinks])."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"destinations: expected a table, got {data!r}")
    found = {name: default_destination(settings, name) for name in DEFAULT_DESTINATIONS}
    for name, section in data.items():
        check_destination_name(name)
        destination = parse_section(DestinationSettings, section, f"destinations.{name}")
        destination.check(name)
        found[name] = destination
    return found


def _stage_timeouts(sections: Any) -> tuple[Any, dict[str, float]]:
    """Take the `timeout` key every [stages.<name>] section may have out of the sections (a duration)."""
    if not isinstance(sections, Mapping):
        return sections, {}
    rest: dict[str, Any] = {}
    timeouts: dict[str, float] = {}
    for name, section in sections.items():
        if isinstance(section, Mapping) and "timeout" in section:
            value = section["timeout"]
            key = f"stages.{name}.timeout"
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise ConfigError(f"{key}: expected a duration such as 30s, 5m, or a number of seconds, got {value!r}")
            timeouts[name] = parse_duration(key, str(value))
            section = {k: v for k, v in section.items() if k != "timeout"}
        rest[name] = section
    return rest, timeouts


def _check_consistency(settings: Settings) -> None:
    """Rules that span keys: size limits that fit together, names that exist."""
    settings.blobs.check_against(settings.delivery.lifetime_seconds)
    known_sinks = [*settings.destinations, *SINKS]
    unknown = sorted(set(settings.supervisor.sinks) - set(known_sinks))
    if unknown:
        raise ConfigError(f"supervisor.sinks: unknown sink {unknown[0]!r} (known: {', '.join(known_sinks)})")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", settings.sinks.analytics.database):
        raise ConfigError("sinks.analytics.database: expected a plain identifier (letters, digits, _)")
    if not _is_loopback(settings.sinks.analytics.query_host):  # the query endpoint has no login
        raise ConfigError("sinks.analytics.query_host: expected a loopback address (127.0.0.1, ::1 or localhost)")
    for key, kind in (("dovecot_destinations", "lmtp"), ("smtp_sink_destinations", "smtp")):
        for name in getattr(settings.local, key):
            if name not in settings.destinations or settings.destinations[name].kind != kind:
                raise ConfigError(f"local.{key}: {name!r} is not a destination of kind {kind}")
    k, r = settings.kafka, settings.runner
    if not 1 <= k.transaction_rotation <= 8:
        raise ConfigError(f"kafka.transaction_rotation: expected 1 to 8 producers, got {k.transaction_rotation}")
    if k.max_partition_fetch_bytes < k.max_request_size:
        raise ConfigError("kafka.max_partition_fetch_bytes: must be at least kafka.max_request_size "
                          f"({k.max_request_size}), or consumers cannot fetch what producers write")
    if r.max_event_bytes > k.max_request_size:
        raise ConfigError(f"runner.max_event_bytes: must be at most kafka.max_request_size ({k.max_request_size})")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parse_named_sections(key: str, kind: str, data: Any, types_: Mapping[str, type]) -> dict[str, Any]:
    """[stages.<name>] or [checks.<name>]: each section against the settings type of that name."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{key}: expected a table, got {data!r}")
    parsed = {}
    for name, section in data.items():
        if name not in types_:
            known = ", ".join(sorted(types_)) or "none"
            raise ConfigError(f"{key}.{name}: unknown {kind} (known: {known})")
        parsed[name] = parse_section(types_[name], section, f"{key}.{name}")
    return parsed
