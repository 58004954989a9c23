"""Configuration: one TOML file, every key overridable from the environment, validated at start.

The file is read into frozen dataclasses. Every key has a type; an unknown key or a value of the
wrong form raises `ConfigError` naming the key (``ingress.port``) and the expected form, so a typo
stops a process at start instead of being silently ignored.

Environment overrides use ``POSTSTELLE_<SECTION>__<KEY>`` (double underscore between levels), e.g.
``POSTSTELLE_INGRESS__PORT=2526`` or ``POSTSTELLE_STAGES__ROUTE__LOCAL_DESTINATION=lmtp``. Values are
parsed as TOML values when they parse (``25``, ``true``, ``["a", "b"]``) and taken as strings
otherwise; lists also accept ``a,b``. ``POSTSTELLE_HOME`` sets ``paths.home`` and
``POSTSTELLE_CONFIG`` names the file.

Stages and sinks declare their own settings dataclasses (``[stages.<name>]``); the loader validates
those sections against the types the stage registry hands it.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ConfigError",
    "PathSettings",
    "Settings",
    "KafkaSettings",
    "IngressSettings",
    "SubmissionSettings",
    "RunnerSettings",
    "LmtpSinkSettings",
    "AnalyticsSinkSettings",
    "SupervisorSettings",
    "LocalStackSettings",
    "MessageSettings",
    "load_settings",
    "parse_section",
    "REPO_ROOT",
    "DESTINATIONS",
    "SINKS",
    "DeliverySettings",
    "LdapSettings",
    "DnsSettings",
    "SmarthostSinkSettings",
    "parse_duration",
    "raw_config",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
# destinations the route stage may choose (each has a `routed.<name>` topic) and the sinks
DESTINATIONS = ("lmtp", "smarthost")
SINKS = ("lmtp", "smarthost", "analytics")
# the default order of the SMTP-time checks (ingress/checks/)
MX_CHECKS = ("dnsbl", "fcrdns", "sender_domain", "rhsbl", "relay", "recipient", "group_policy", "greylist")
SUBMISSION_CHECKS = ("sender_login", "relay", "recipient", "group_policy")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(key: str, text: str) -> float:
    """Seconds in "90s", "5m", "4h", "7d" (a bare number is seconds)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", text)  # no spaces: it names a retry topic
    if not match or float(match.group(1)) <= 0:
        raise ConfigError(f"{key}: expected a duration such as 30s, 5m, 4h or 7d, got {text!r}")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
ENV_PREFIX = "POSTSTELLE_"
# environment variables with the prefix that are not config keys
_ENV_NOT_KEYS = {"POSTSTELLE_HOME", "POSTSTELLE_CONFIG", "POSTSTELLE_INSTANCE", "POSTSTELLE_LOG_LEVEL",
                 "POSTSTELLE_TEST_BASE"}


class ConfigError(ValueError):
    """A configuration key is unknown or its value has the wrong form."""


@dataclass(frozen=True, slots=True)
class PathSettings:
    home: str = "var"  # state directory: blobs, broker data, maildirs, analytics, run files


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    bootstrap: str = "127.0.0.1:19092"
    topic_prefix: str = "poststelle"
    partitions: int = 4
    replication_factor: int = 1
    request_timeout_ms: int = 10_000
    # producer request and consumer fetch limits; events carry blob references, not bodies
    max_request_size: int = 1_048_576
    max_partition_fetch_bytes: int = 1_048_576
    # client ids are this plus the component; transactional ids derive from topic_prefix
    client_id: str = "poststelle"


@dataclass(frozen=True, slots=True)
class IngressSettings:
    host: str = "127.0.0.1"
    port: int = 2525
    hostname: str = "mx.school.test"  # the name in the banner and in Received: headers
    max_message_size: int = 26_214_400  # SIZE, 25 MiB
    local_domains: list[str] = field(default_factory=lambda: ["school.test"])
    # seconds to wait for the blob fsync and the broker acknowledgement before answering 451
    persist_timeout: float = 15.0
    data_timeout: float = 300.0  # idle timeout per command/DATA chunk (RFC 5321 4.5.3.2)
    # SMTP-time checks of this (MX) listener, in order; each has a [checks.<name>] section
    checks: list[str] = field(default_factory=lambda: list(MX_CHECKS))
    check_timeout: float = 10.0  # a check that takes longer answers 451 4.3.0
    # clients that skip the reputation checks (DNSBL, FCrDNS, sender domain, RHSBL, greylisting)
    client_allowlist: list[str] = field(default_factory=list)
    # clients that may relay to non-local domains without AUTH (Postfix's mynetworks)
    relay_networks: list[str] = field(default_factory=list)
    max_connections: int = 200  # concurrent sessions in total; more get 421 4.7.0 at connect
    max_connections_per_ip: int = 10  # concurrent sessions per client IP
    max_recipients: int = 100  # per message; more get 452 4.5.3
    max_bad_commands: int = 10  # unknown/invalid commands per session before 421 4.7.0
    # seconds to wait before the banner; a client that speaks first is an early talker (554 5.5.1). 0: off
    greet_delay: float = 0.0
    # seconds to wait after storing a message for the pipeline's verdict (554 at DATA when every
    # recipient's copy is rejected); a later rejection becomes quarantine. 0: answer at once
    verdict_wait: float = 20.0


@dataclass(frozen=True, slots=True)
class SubmissionSettings:
    """Authenticated submission (RFC 6409): STARTTLS on `port`, implicit TLS (RFC 8314) on `tls_port`."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 587  # STARTTLS; 0: no such listener
    tls_port: int = 465  # implicit TLS; 0: no such listener
    # PEM files; both empty: a self-signed certificate for ingress.hostname is made under <home>/tls/
    cert_file: str = ""
    key_file: str = ""
    checks: list[str] = field(default_factory=lambda: list(SUBMISSION_CHECKS))
    max_auth_failures: int = 5  # failed AUTH per client IP within auth_failure_window ...
    auth_failure_window: float = 300.0  # ... after which AUTH answers 454 4.7.0 until the window passes


@dataclass(frozen=True, slots=True)
class RunnerSettings:
    batch_size: int = 200  # records per consume → process → produce transaction
    poll_timeout_ms: int = 500
    tempfail_backoff_initial: float = 1.0
    tempfail_backoff_max: float = 60.0
    max_event_bytes: int = 1_000_000  # larger input records are poison
    max_hops: int = 64  # an event that passed more stages than this is looping: poison
    # seconds one record may take in a stage or service before it counts as a temporary failure
    # (retried with backoff); a stage's own `timeout` key ([stages.<name>] timeout = "90s") overrides it
    handle_timeout: float = 60.0


@dataclass(frozen=True, slots=True)
class LmtpSinkSettings:
    host: str = "127.0.0.1"
    port: int = 2424
    inflight: int = 16  # routed events delivered concurrently; bounds duplicates after a crash
    timeout: float = 60.0
    lhlo_name: str = "mx.school.test"


@dataclass(frozen=True, slots=True)
class SmarthostSinkSettings:
    """The next hop for non-local recipients (and DSNs to outside senders)."""

    host: str = "127.0.0.1"
    port: int = 2526
    # none: plain SMTP; opportunistic: STARTTLS when offered; required: STARTTLS or defer;
    # implicit: TLS from the first byte (port 465 style)
    tls: str = "opportunistic"
    verify: bool = True  # verify the certificate chain and host name
    ca_file: str = ""  # extra CA bundle (PEM); empty: the system's
    username: str = ""  # AUTH only when set (and only over TLS unless tls = "none")
    password_file: str = ""  # the password, read at start; never in the config itself
    helo_name: str = "mx.school.test"
    inflight: int = 16
    timeout: float = 60.0

    def __post_init__(self) -> None:
        if self.tls not in ("none", "opportunistic", "required", "implicit"):
            raise ConfigError(f"sinks.smarthost.tls: expected none, opportunistic, required or implicit, "
                              f"got {self.tls!r}")


@dataclass(frozen=True, slots=True)
class DeliverySettings:
    """Retry schedule and lifetime of deferred deliveries (Postfix: queue_run_delay, maximal_queue_lifetime)."""

    # delay before the 2nd, 3rd, ... attempt; the last delay repeats until the lifetime ends
    retry_schedule: list[str] = field(default_factory=lambda: ["1m", "5m", "15m", "1h", "4h"])
    lifetime: str = "7d"  # after this age a deferred delivery bounces (reason "expired")

    def __post_init__(self) -> None:
        if not self.retry_schedule:
            raise ConfigError("delivery.retry_schedule: expected at least one delay")
        for i, text in enumerate(self.retry_schedule):
            parse_duration(f"delivery.retry_schedule[{i}]", text)
        parse_duration("delivery.lifetime", self.lifetime)

    @property
    def lifetime_seconds(self) -> float:
        return parse_duration("delivery.lifetime", self.lifetime)

    def delay_name_after(self, attempt: int) -> str:
        """The schedule entry after failed attempt number `attempt` (1-based): "5m"."""
        return self.retry_schedule[min(attempt, len(self.retry_schedule)) - 1]

    def delay_after(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        return parse_duration("delivery.retry_schedule", self.delay_name_after(attempt))


@dataclass(frozen=True, slots=True)
class AnalyticsSinkSettings:
    # empty: embedded chDB under <home>/clickhouse; else a ClickHouse server URL (http://host:8123)
    url: str = ""
    database: str = "poststelle"
    batch_rows: int = 1000
    batch_seconds: float = 1.0
    # loopback port where the sink answers `poststelle sql` while it holds the embedded engine
    query_host: str = "127.0.0.1"
    query_port: int = 18123


@dataclass(frozen=True, slots=True)
class SinkSettings:
    lmtp: LmtpSinkSettings = field(default_factory=LmtpSinkSettings)
    smarthost: SmarthostSinkSettings = field(default_factory=SmarthostSinkSettings)
    analytics: AnalyticsSinkSettings = field(default_factory=AnalyticsSinkSettings)


@dataclass(frozen=True, slots=True)
class TopologySettings:
    stages: list[str] = field(default_factory=lambda: ["route"])
    # a site's own stages: Python modules imported before the config is validated (each registers
    # its stage classes with pipeline.registry.register)
    stage_modules: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SupervisorSettings:
    restart_backoff_initial: float = 0.5
    restart_backoff_max: float = 30.0
    stop_timeout: float = 8.0  # total budget for a clean stop of every child
    # which pipeline processes to run, in addition to the infrastructure
    run_ingress: bool = True
    run_stages: bool = True
    sinks: list[str] = field(default_factory=lambda: ["lmtp", "smarthost", "analytics"])


@dataclass(frozen=True, slots=True)
class LdapSettings:
    """The site's directory (the local stack runs slapd there)."""

    host: str = "127.0.0.1"
    port: int = 3389
    base: str = "dc=school,dc=test"
    timeout: float = 5.0  # per directory call; keep well below ingress.check_timeout
    cache_ttl: float = 60.0  # seconds found and not-found lookups are reused; 0: off (failures never)
    bind_dn: str = ""  # DN to search as; empty: anonymous read
    password_file: str = ""  # file holding the bind password (required with bind_dn)


@dataclass(frozen=True, slots=True)
class DnsSettings:
    """The resolver the checks ask (the local stack runs NSD with the test zones there)."""

    nameserver: str = "127.0.0.1"
    port: int = 5353
    timeout: float = 3.0  # budget of one whole lookup (all tries)
    tries: int = 2  # UDP attempts within the timeout (TCP when an answer is truncated)
    cache_size: int = 10_000  # answers kept in process; 0: no cache (temporary failures are never cached)
    cache_max_ttl: float = 300.0  # most seconds a positive answer is reused
    cache_negative_max_ttl: float = 60.0  # the same for NXDOMAIN / NODATA


@dataclass(frozen=True, slots=True)
class MessageSettings:
    """Caps of the parsed message (`pipeline.mail.message`): one set for every stage and check, so no
    two of them can be shown different messages. Past a cap the parse stops there and says so."""

    max_depth: int = 20  # MIME nesting (multipart and message/rfc822 levels)
    max_parts: int = 1000  # MIME entities walked
    max_header_bytes: int = 262_144  # of the header section read
    max_header_fields: int = 1000  # header fields read
    max_text_bytes: int = 2_000_000  # decoded text (and HTML markup) of all text parts together
    max_links: int = 1000  # links kept, in document order

    def __post_init__(self) -> None:
        bounds = {"max_depth": (1, 64), "max_parts": (1, 100_000), "max_header_bytes": (1024, 1 << 30),
                  "max_header_fields": (10, 1_000_000), "max_text_bytes": (1, 1 << 30), "max_links": (1, 1_000_000)}
        for key, (low, high) in bounds.items():
            if not low <= getattr(self, key) <= high:
                raise ConfigError(f"message.{key}: expected {low}..{high}, got {getattr(self, key)}")


@dataclass(frozen=True, slots=True)
class LocalStackSettings:
    """Daemons `poststelle up` runs itself. Off in production, where they are the site's."""

    kafka: bool = True
    kafka_controller_port: int = 19093
    kafka_heap: str = "512m"
    kafka_version: str = "3.9.1"
    kafka_jars: str = ""  # where Maven puts the broker jars; empty: <home>/kafka/lib
    dovecot: bool = True
    dovecot_users: str = "deploy/local/dovecot/users"
    smarthost: bool = True  # Postfix's smtp-sink as the smarthost, on sinks.smarthost host:port
    slapd: bool = True  # OpenLDAP with deploy/local/directory.ldif, on ldap host:port
    nsd: bool = True  # NSD with the zones in deploy/local/dns/, on dns nameserver:port
    clamd: bool = True  # clamd with the signatures in deploy/local/clamav/, on clamd_host:clamd_port
    clamd_host: str = "127.0.0.1"
    clamd_port: int = 3310  # TCP; the unix socket is <home>/clamd/clamd.sock


@dataclass(frozen=True, slots=True)
class Settings:
    paths: PathSettings = field(default_factory=PathSettings)
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    ingress: IngressSettings = field(default_factory=IngressSettings)
    submission: SubmissionSettings = field(default_factory=SubmissionSettings)
    topology: TopologySettings = field(default_factory=TopologySettings)
    runner: RunnerSettings = field(default_factory=RunnerSettings)
    sinks: SinkSettings = field(default_factory=SinkSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    ldap: LdapSettings = field(default_factory=LdapSettings)
    dns: DnsSettings = field(default_factory=DnsSettings)
    message: MessageSettings = field(default_factory=MessageSettings)
    supervisor: SupervisorSettings = field(default_factory=SupervisorSettings)
    local: LocalStackSettings = field(default_factory=LocalStackSettings)
    # [stages.<name>] sections, each validated against the stage's own settings dataclass
    stages: Mapping[str, Any] = field(default_factory=dict)
    # [checks.<name>] sections, each validated against the check's own settings dataclass
    checks: Mapping[str, Any] = field(default_factory=dict)
    # [stages.<name>] timeout: seconds one record may take in that stage (else runner.handle_timeout)
    stage_timeouts: Mapping[str, float] = field(default_factory=dict)
    source: str = ""  # the file these settings came from, for messages

    @property
    def home(self) -> Path:
        home = Path(self.paths.home)
        return home if home.is_absolute() else (REPO_ROOT / home)

    def stage_settings(self, name: str) -> Any:
        return self.stages[name]

    def stage_timeout(self, name: str) -> float | None:
        """The `timeout` of `[stages.<name>]`, or None when the section does not set one."""
        return self.stage_timeouts.get(name)

    def check_settings(self, name: str) -> Any:
        return self.checks[name]


def _type_name(tp: Any) -> str:
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
    handled_elsewhere = {"stages", "checks"} if cls is Settings else set()
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
    data = _merge(data, overrides)
    settings = parse_section(Settings, data, "")
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
    return dataclasses.replace(settings, stages=stages, checks=checks, stage_timeouts=stage_timeouts,
                               source=str(path or ""))


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
    unknown = sorted(set(settings.supervisor.sinks) - set(SINKS))
    if unknown:
        raise ConfigError(f"supervisor.sinks: unknown sink {unknown[0]!r} (known: {', '.join(SINKS)})")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", settings.sinks.analytics.database):
        raise ConfigError("sinks.analytics.database: expected a plain identifier (letters, digits, _)")
    if not _is_loopback(settings.sinks.analytics.query_host):  # the query endpoint has no login
        raise ConfigError("sinks.analytics.query_host: expected a loopback address (127.0.0.1, ::1 or localhost)")
    k, r = settings.kafka, settings.runner
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
