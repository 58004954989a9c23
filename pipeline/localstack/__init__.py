"""External daemons of the local stack (Kafka, Dovecot, ...), described as data.

Each module here turns settings into a `ServiceSpec`: the files it needs are rendered under the
state directory, and the spec says how to start the daemon and how to tell that it is ready. The
supervisor (`pipeline.supervisor`) runs specs; it knows nothing about any particular daemon.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ServiceSpec"]


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
