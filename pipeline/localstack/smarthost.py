"""Postfix's smtp-sink(1) as the local stack's smarthost: accepts every message and keeps a copy.

smtp-sink answers 250 to everything (it offers AUTH PLAIN/LOGIN and accepts any credentials, but no
STARTTLS) and, with ``-d``, writes one file per mail transaction into `smarthost_dump_dir`::

    <home>/smarthost/<YYYYmmddHHMMSS>.<random hex>

Each file holds smtp-sink's own headers (``X-Client-Addr``, ``X-Client-Proto``, ``X-Helo-Args``,
``X-Mail-Args: <sender>``, one ``X-Rcpt-Args: <rcpt>`` per RCPT, a three-line ``Received:``), then
the message as received with LF line endings and dot-stuffing undone, then one empty line. The file
is opened during the transaction and written as data arrives: a reader may see it incomplete.

Started as root, smtp-sink refuses to run without ``-u user`` and writes the dumps as that user
(``postfix`` from the Debian package, else ``nobody``), so the dump dir is created owned by it.
Started as another user, ``-u`` must not be given (``initgroups`` fails) and the files are that
user's.

`smtp_sink_argv` also serves tests that need a misbehaving next hop; verified replies (smtp-sink
3.x; ``-r``/``-f`` imply ``-p``, no PIPELINING):

    -r RCPT     450 4.3.0 Error: command failed   at RCPT (then DATA: 503 5.5.1)
    -f RCPT     500 5.3.0 Error: command failed   at RCPT
    -r .        450 4.3.0 Error: command failed   after the final dot
    -f .        500 5.3.0 Error: command failed   after the final dot
    -r MAIL / -f DATA / -r CONNECT ...            the same replies at that command (CONNECT: greeting)
    -Q RCPT     421 4.0.0 Server closing connection, then hangs up
    -q RCPT     hangs up without a reply
    -b TEXT / -B TEXT                             replace the soft / hard reply text
"""
from __future__ import annotations

import os
import pwd
import shutil
from pathlib import Path

from pipeline.localstack import ServiceSpec
from pipeline.localstack.dovecot import _require_access
from pipeline.settings import ConfigError, Settings

__all__ = ["smarthost_service", "smarthost_dump_dir", "destination_sink_service", "destination_dump_dir",
           "smtp_sink_argv", "prepare_dump_dir", "sink_user", "mx_host_services", "mx_host_dump_dir"]

HOSTNAME = "smarthost.test"  # in smtp-sink's greeting and EHLO reply
_BACKLOG = "64"
_DUMP_TEMPLATE = "%Y%m%d%H%M%S."  # strftime; smtp-sink appends a random hex number


def smarthost_dump_dir(home: Path) -> Path:
    return Path(os.path.abspath(home)) / "smarthost"


def sink_user() -> str | None:
    """The user smtp-sink switches to (``-u``): needed as root, impossible otherwise."""
    if os.geteuid() != 0:
        return None
    for name in ("postfix", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise ValueError("smtp-sink runs as root only with -u: neither user postfix nor nobody exists")


def prepare_dump_dir(dump_dir: Path) -> Path:
    """Create `dump_dir` writable by the user smtp-sink runs as; ValueError if that user cannot reach it."""
    dump_dir = Path(os.path.abspath(dump_dir))
    dump_dir.mkdir(parents=True, exist_ok=True)
    user = sink_user()
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(dump_dir, entry.pw_uid, entry.pw_gid)
        _require_access(dump_dir, entry.pw_uid, entry.pw_gid, os.W_OK | os.X_OK,
                        what=f"smarthost dump dir for smtp-sink ({user})")
    return dump_dir


def smtp_sink_argv(host: str, port: int, dump_dir: Path | None, extra_flags: list[str] | tuple[str, ...] = ()
                   ) -> list[str]:
    """The smtp-sink command line; with `dump_dir` (see `prepare_dump_dir`) each transaction is kept."""
    argv = [_binary(), "-h", HOSTNAME]
    user = sink_user()
    if user is not None:
        argv += ["-u", user]
    if dump_dir is not None:
        argv += ["-d", f"{os.path.abspath(dump_dir)}/{_DUMP_TEMPLATE}"]
    address = f"[{host}]" if ":" in host else host
    return [*argv, *extra_flags, f"inet:{address}:{port}", _BACKLOG]


def smarthost_service(settings: Settings) -> ServiceSpec:
    s = settings.sinks.smarthost
    dump_dir = prepare_dump_dir(smarthost_dump_dir(settings.home))
    return ServiceSpec(name="smarthost", argv=smtp_sink_argv(s.host, s.port, dump_dir),
                       ready_port=(s.host, s.port), stop_timeout=3.0)


def mx_host_dump_dir(home: Path, address: str) -> Path:
    """Where the test MX host on `address` keeps what it received: <home>/mx/<address>/."""
    return Path(os.path.abspath(home)) / "mx" / address


def mx_host_services(settings: Settings) -> list[ServiceSpec]:
    """smtp-sink on each `local.mx_hosts` address, on the port of the destinations of kind mx: the test
    MX hosts the test zone's MX and A records point at (deploy/local/dns/test.zone), so an mx
    destination has somewhere to deliver. Without an mx destination there is nothing to start."""
    ports = sorted({d.port for d in map(settings.destination, settings.destination_names) if d.kind == "mx"})
    if len(ports) > 1:
        raise ConfigError(f"local.mx_hosts: the destinations of kind mx use different ports {ports}; "
                          "the test MX hosts listen on one")
    return [ServiceSpec(name=f"mx-{address}", argv=smtp_sink_argv(address, port, prepare_dump_dir(
                            mx_host_dump_dir(settings.home, address))),
                        ready_port=(address, port), stop_timeout=3.0)
            for port in ports for address in settings.local.mx_hosts]


def destination_dump_dir(home: Path, destination: str) -> Path:
    """Where the smtp-sink playing the SMTP destination `destination` keeps its transactions."""
    return Path(os.path.abspath(home)) / "smtp-sink" / destination


def destination_sink_service(settings: Settings, destination: str) -> ServiceSpec:
    """smtp-sink as the next hop of an SMTP destination ([local] smtp_sink_destinations): a list
    host or a department's server in the local stack, on the destination's host:port."""
    d = settings.destination(destination)
    dump_dir = prepare_dump_dir(destination_dump_dir(settings.home, destination))
    return ServiceSpec(name=f"smtp-sink:{destination}", argv=smtp_sink_argv(d.host, d.port, dump_dir),
                       ready_port=(d.host, d.port), stop_timeout=3.0)


def _binary() -> str:
    """smtp-sink lives in /usr/sbin, often not on a user's PATH."""
    return shutil.which("smtp-sink") or shutil.which("smtp-sink", path="/usr/sbin:/usr/local/sbin") or \
        "/usr/sbin/smtp-sink"
