"""Configuration: the sections of the one TOML file, as frozen dataclasses with typed defaults.

Every key has a type and a default; `pipeline.config` reads the file and the environment overrides
into these classes and refuses what does not fit (an unknown key, a value of the wrong form), naming
the key. Stages and checks declare their own settings dataclasses (``[stages.<name>]``,
``[checks.<name>]``), which the loader validates against the registry.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.blob_settings import BlobSettings
from pipeline.destination_settings import DEFAULT_DESTINATIONS, DestinationSettings, default_destination
from pipeline.metrics_settings import MetricsSettings
from pipeline.outbound_settings import DkimSettings
from pipeline.quarantine_settings import DigestSettings, QuarantineSettings, WebSettings
from pipeline.settings_base import ConfigError, parse_duration
from pipeline.srs_settings import SrsSettings
from pipeline.topology_settings import TopologySettings
from pipeline.users_settings import (
    DIGESTS,
    LANGUAGES,
    THRESHOLDS,
    USER_SETTINGS,
    UserLdapAttributes,
    UserLimits,
    UsersSettings,
)

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
    "REPO_ROOT",
    "USER_SETTINGS",
    "THRESHOLDS",
    "DIGESTS",
    "LANGUAGES",
    "DESTINATIONS",
    "SINKS",
    "DeliverySettings",
    "LdapSettings",
    "UsersSettings",
    "UserLimits",
    "UserLdapAttributes",
    "DnsSettings",
    "SmarthostSinkSettings",
    "DestinationSettings",
    "MetricsSettings",
    "BlobSettings",
    "parse_duration",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
# the destinations every site has (each destination has a `routed.<name>` topic and a sink; a site
# adds its own in [destinations.<name>], see pipeline.destination_settings) and the sinks that are not
# destinations
DESTINATIONS = DEFAULT_DESTINATIONS
SINKS = ("analytics",)
# the default order of the SMTP-time checks (ingress/checks/)
MX_CHECKS = ("dnsbl", "fcrdns", "sender_domain", "rhsbl", "relay", "recipient", "group_policy", "greylist")
SUBMISSION_CHECKS = ("sender_login", "relay", "recipient", "group_policy")


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
    # while the broker is unreachable, components try again after this pause, doubling up to the max
    reconnect_backoff_initial: float = 0.5
    reconnect_backoff_max: float = 2.0
    # transactional producers a component takes turns with (ids <id>, <id>.r1, ...): a transaction
    # right after another on the same id waits ~20 ms for the broker's markers (pipeline.producers)
    transaction_rotation: int = 2


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
    # concurrent sessions in total (all listeners; ~13-15 KiB each when idle); more get 421 4.7.0 at connect.
    # The ingress raises its descriptor limit to fit them (ingress.descriptors)
    max_connections: int = 5000
    max_connections_per_ip: int = 10  # concurrent sessions per client IP
    # connections the kernel completes before the ingress accepts them (listen(2)'s backlog, capped by
    # net.core.somaxconn); asyncio's default of 100 overflows when hundreds connect at once
    listen_backlog: int = 1024
    # under stress (sessions in use >= stress_threshold x max_connections) a session may idle only
    # stress_timeout seconds before its next command (Postfix's smtpd_timeout ${stress?10}:300);
    # a message's DATA keeps data_timeout. stress_timeout = 0: off
    stress_threshold: float = 0.8
    stress_timeout: float = 10.0
    max_recipients: int = 100  # per message; more get 452 4.5.3
    max_bad_commands: int = 10  # unknown/invalid commands per session before 421 4.7.0
    # seconds to wait before the banner; a client that speaks first is an early talker (554 5.5.1). 0: off
    greet_delay: float = 0.0
    # seconds to wait after storing a message for the pipeline's verdict (554 at DATA when every
    # recipient's copy is rejected); a later rejection becomes quarantine. 0: answer at once
    verdict_wait: float = 20.0
    # Received header fields a message may carry; one more is a mail loop: 554 5.4.6 at DATA, on every
    # listener (RFC 5321 6.3; Postfix's hopcount_limit, Exim's received_headers_max)
    max_received_headers: int = 50
    # offer STARTTLS on this (MX) listener, never require it (RFC 3207 4: a public MX must take plain
    # SMTP too); the certificate: cert_file/key_file (PEM), both empty: the submission listeners' one
    starttls: bool = True
    cert_file: str = ""
    key_file: str = ""

    def __post_init__(self) -> None:
        if self.max_received_headers < 1:
            raise ConfigError("ingress.max_received_headers: must be at least 1")


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
    # records of a batch handled at the same time (a stage waiting on DNS, LDAP or clamd for one
    # record goes on with the next); outputs and offsets are still committed in record order.
    # A stage whose `concurrency` attribute is lower gets that; 1: one record after another
    concurrency: int = 16


@dataclass(frozen=True, slots=True)
class LmtpSinkSettings:
    host: str = "127.0.0.1"
    port: int = 2424
    inflight: int = 16  # routed events delivered concurrently; bounds duplicates after a crash
    timeout: float = 60.0
    lhlo_name: str = "mx.school.test"
    reuse_seconds: float = 2.0  # an unused connection is kept this long for the next delivery (0: never)


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
    reuse_seconds: float = 2.0  # an unused connection is kept this long for the next delivery (0: never)

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
    # after this age a deferred delivery's sender is told once that it is still being tried (a DSN with
    # Action: delayed; Postfix's delay_warning_time, Exim's delay_warning); "0": never
    delay_warning: str = "4h"

    def __post_init__(self) -> None:
        if not self.retry_schedule:
            raise ConfigError("delivery.retry_schedule: expected at least one delay")
        for i, text in enumerate(self.retry_schedule):
            parse_duration(f"delivery.retry_schedule[{i}]", text)
        parse_duration("delivery.lifetime", self.lifetime)
        _ = self.delay_warning_seconds

    @property
    def lifetime_seconds(self) -> float:
        return parse_duration("delivery.lifetime", self.lifetime)

    @property
    def delay_warning_seconds(self) -> float:
        """Age at which the sender of a deferred delivery is told of the delay; 0: never."""
        return 0.0 if self.delay_warning == "0" else parse_duration("delivery.delay_warning", self.delay_warning)

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
    batch_rows: int = 5000
    batch_seconds: float = 3.0
    # loopback port where the sink answers `poststelle sql` while it holds the embedded engine
    query_host: str = "127.0.0.1"
    query_port: int = 18123


@dataclass(frozen=True, slots=True)
class SinkSettings:
    lmtp: LmtpSinkSettings = field(default_factory=LmtpSinkSettings)
    smarthost: SmarthostSinkSettings = field(default_factory=SmarthostSinkSettings)
    analytics: AnalyticsSinkSettings = field(default_factory=AnalyticsSinkSettings)


@dataclass(frozen=True, slots=True)
class SupervisorSettings:
    restart_backoff_initial: float = 0.5
    restart_backoff_max: float = 30.0
    stop_timeout: float = 8.0  # total budget for a clean stop of every child
    # which pipeline processes to run, in addition to the infrastructure
    run_ingress: bool = True
    run_stages: bool = True
    # the sinks to run: destination names and "analytics"; not set: every destination and analytics
    sinks: list[str] = field(default_factory=lambda: ["lmtp", "smarthost", "analytics"])
    # processes per component, e.g. {ingress = 2, "stage:spam" = 2}; not named: one. The ingress's
    # processes share its ports (SO_REUSEPORT); a stage's or sink's share its consumer group
    processes: dict[str, int] = field(default_factory=dict)


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
    # the group attribute holding plain member addresses (misc.schema's rfc822MailMember); "": none
    member_address_attribute: str = "rfc822MailMember"

    def __post_init__(self) -> None:
        if not re.fullmatch(r"([A-Za-z][A-Za-z0-9-]*)?", self.member_address_attribute):
            raise ConfigError(f"ldap.member_address_attribute: expected an LDAP attribute name, "
                              f"got {self.member_address_attribute!r}")


@dataclass(frozen=True, slots=True)
class DnsSettings:
    """The resolver the checks ask (the local stack runs NSD with the test zones there)."""

    nameserver: str = "127.0.0.1"
    port: int = 5353
    timeout: float = 3.0  # budget of one whole lookup (all tries)
    tries: int = 2  # UDP attempts within the timeout (TCP when an answer is truncated)
    cache_size: int = 10_000  # answers kept in process; 0: no cache
    cache_max_ttl: float = 300.0  # most seconds a positive answer is reused
    cache_negative_max_ttl: float = 60.0  # the same for NXDOMAIN / NODATA
    cache_tempfail_ttl: float = 1.0  # the same for SERVFAIL / REFUSED (never for a timeout)


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
    # test MX hosts: smtp-sink on each of these addresses, on the port of the destinations of kind mx
    # (the test zone's MX hosts)
    mx_hosts: list[str] = field(default_factory=list)
    # lmtp destinations the local Dovecot serves on their own port (a second mailbox store)
    dovecot_destinations: list[str] = field(default_factory=list)
    # smtp destinations played by an smtp-sink of their own (a list host, a department's server)
    smtp_sink_destinations: list[str] = field(default_factory=list)
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
    dkim: DkimSettings = field(default_factory=DkimSettings)
    ldap: LdapSettings = field(default_factory=LdapSettings)
    users: UsersSettings = field(default_factory=UsersSettings)
    dns: DnsSettings = field(default_factory=DnsSettings)
    message: MessageSettings = field(default_factory=MessageSettings)
    supervisor: SupervisorSettings = field(default_factory=SupervisorSettings)
    local: LocalStackSettings = field(default_factory=LocalStackSettings)
    quarantine: QuarantineSettings = field(default_factory=QuarantineSettings)
    web: WebSettings = field(default_factory=WebSettings)
    digest: DigestSettings = field(default_factory=DigestSettings)
    srs: SrsSettings = field(default_factory=SrsSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    blobs: BlobSettings = field(default_factory=BlobSettings)
    # [destinations.<name>]: the next hops, with the defaults lmtp and smarthost (see `destinations_from`)
    destinations: Mapping[str, DestinationSettings] = field(default_factory=dict)
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

    def destination(self, name: str) -> DestinationSettings:
        """The destination `name`: its section, or for lmtp and smarthost the default built from [sinks]."""
        if name in self.destinations:
            return self.destinations[name]
        if name in DEFAULT_DESTINATIONS:
            return default_destination(self, name)
        raise ConfigError(f"unknown destination {name!r} (known: {', '.join(self.destination_names)})")

    @property
    def destination_names(self) -> tuple[str, ...]:
        """Every destination: the defaults first, then the site's own, in config order."""
        return tuple(dict.fromkeys([*DEFAULT_DESTINATIONS, *self.destinations]))

    def stage_settings(self, name: str) -> Any:
        return self.stages[name]

    def stage_timeout(self, name: str) -> float | None:
        """The `timeout` of `[stages.<name>]`, or None when the section does not set one."""
        return self.stage_timeouts.get(name)

    def check_settings(self, name: str) -> Any:
        return self.checks[name]

