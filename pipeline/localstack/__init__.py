"""External daemons of the local stack (Kafka, Dovecot, ...), described as data.

Each module here turns settings into a `ServiceSpec`: the files it needs are rendered under the
state directory, and the spec says how to start the daemon and how to tell that it is ready. The
supervisor (`pipeline.supervisor`) runs specs; it knows nothing about any particular daemon.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.settings import REPO_ROOT, Settings

__all__ = ["ServiceSpec", "local_services"]


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """How to run one child process of the supervisor."""

    name: str
    argv: list[str]
    # ready when a TCP connect to (host, port) succeeds; None: ready once started
    ready_port: tuple[str, int] | None = None
    # when set, readiness is this check answering True instead (e.g. clamd answering PING)
    ready_probe: Callable[[], bool] | None = None
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    # seconds between SIGTERM and SIGKILL at shutdown
    stop_timeout: float = 5.0
    # (services stop in reverse start order; infrastructure starts first and stops last;
    #  stdout and stderr go to <home>/log/<name>.log)


def local_services(settings: Settings) -> list[ServiceSpec]:
    """The daemons of the local stack the config asks for, in start order (Kafka first)."""
    specs = []
    if settings.local.kafka:
        from pipeline.localstack.kafka import kafka_service

        specs.append(kafka_service(settings))
    if settings.local.dovecot:
        from pipeline.localstack.dovecot import dovecot_service

        lmtp = settings.sinks.lmtp
        users = Path(settings.local.dovecot_users)
        if not users.is_absolute():
            users = REPO_ROOT / users
        extra = tuple(settings.destination(name).port for name in settings.local.dovecot_destinations)
        specs.append(dovecot_service(settings.home, lmtp.host, lmtp.port, users, extra_ports=extra))
    if settings.local.smarthost:
        from pipeline.localstack.smarthost import smarthost_service

        specs.append(smarthost_service(settings))
    for name in settings.local.smtp_sink_destinations:
        from pipeline.localstack.smarthost import destination_sink_service

        specs.append(destination_sink_service(settings, name))
    if settings.local.mx_hosts:
        from pipeline.localstack.smarthost import mx_host_services

        specs.extend(mx_host_services(settings))
    if settings.local.slapd:
        from pipeline.localstack.slapd import LDIF, slapd_service

        specs.append(slapd_service(settings.home, settings.ldap.host, settings.ldap.port, LDIF))
    if settings.local.nsd:
        from pipeline.localstack.nsd import ZONES_DIR, nsd_service

        specs.append(nsd_service(settings.home, settings.dns.nameserver, settings.dns.port, ZONES_DIR))
    if settings.local.clamd:
        from pipeline.localstack.clamd import DEFAULT_STREAM_MAX_LENGTH, clamd_service

        virus = settings.stages.get("virus")
        stream_max = getattr(virus, "stream_max_length", DEFAULT_STREAM_MAX_LENGTH)
        specs.append(clamd_service(settings.home, settings.local.clamd_host, settings.local.clamd_port,
                                   stream_max_length=stream_max))
    return specs
