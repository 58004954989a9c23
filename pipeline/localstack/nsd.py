"""NSD as the local stack's authoritative DNS server for the test zones (DNSBL, PTR, MX, SPF, DKIM).

`nsd_service` renders ``<state_home>/dns/nsd.conf`` with one ``zone:`` per ``<zone>.zone`` file in
the zones directory (``deploy/local/dns/``, whose ``test.zone`` header documents the layout and
the test hosts), checks config and zones with ``nsd-checkconf``/``nsd-checkzone`` and returns the
`ServiceSpec` that runs ``nsd -d -c <conf>`` in the foreground. Layout under ``state_home``::

    dns/nsd.conf     rendered config (nothing from /etc/nsd is read)
    dns/nsd.pid      pid file
    dns/xfrd.state   NSD's zone transfer state (there are no transfers; NSD insists on the file)
    dns/zone.list    NSD's list of dynamically added zones (unused)
    dns/xfr/         NSD's scratch directory for transfers (unused)

NSD serves UDP and TCP on the same address; readiness is the TCP port. NSD answers from memory
(``database: ""``, no nsd.db), logs to its stderr, which the supervisor captures, and keeps the
identity it was started with (``username: ""``): as root it stays root, which costs nothing here,
as it only reads the zone files and binds an unprivileged port. NSD is no resolver: names outside
its zones get REFUSED, so a client must only ask it about the test zones.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from pipeline.localstack import ServiceSpec

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "ZONES_DIR",
    "NsdSetupError",
    "nsd_service",
    "zone_files",
]

_REPO = Path(__file__).resolve().parents[2]
ZONES_DIR = _REPO / "deploy/local/dns"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5353
_ZONE_SUFFIX = ".zone"
# a zone name as a file name: dot-separated labels, no empty label, no path tricks
_ZONE_NAME = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(\.(?!-)[A-Za-z0-9_-]{1,63})*$")
_SBIN = "/usr/sbin:/usr/local/sbin:/sbin"
_CHECK_TIMEOUT = 30.0
# NSD exits within a second of SIGTERM
_STOP_TIMEOUT = 5.0


class NsdSetupError(RuntimeError):
    """NSD cannot be started: binary missing, no zones, or config/zone check failed."""


def zone_files(zones_dir: Path) -> dict[str, Path]:
    """The zones in `zones_dir`: zone name -> file, one ``<zone>.zone`` file per zone, sorted."""
    zones: dict[str, Path] = {}
    for path in sorted(Path(zones_dir).glob(f"*{_ZONE_SUFFIX}")):
        name = path.name[: -len(_ZONE_SUFFIX)]
        if not _ZONE_NAME.match(name):
            raise NsdSetupError(f"zone file name is not <zone name>{_ZONE_SUFFIX}: {path}")
        zones[name.lower()] = path
    return zones


def nsd_service(state_home: Path, host: str, port: int, zones_dir: Path) -> ServiceSpec:
    """Render the NSD config under `state_home`, check it and its zones, describe how to run NSD.

    Raises `NsdSetupError` when NSD is not installed, `zones_dir` holds no ``*.zone`` file, or
    ``nsd-checkconf``/``nsd-checkzone`` reject the config or a zone (their output is included).
    """
    state_home = Path(os.path.abspath(state_home))
    zones_dir = Path(os.path.abspath(zones_dir))
    if not zones_dir.is_dir():
        raise NsdSetupError(f"zones directory not found: {zones_dir}")
    zones = zone_files(zones_dir)
    if not zones:
        raise NsdSetupError(f"no *{_ZONE_SUFFIX} files in {zones_dir}")
    nsd = _binary("nsd")
    checkconf = _binary("nsd-checkconf")
    checkzone = _binary("nsd-checkzone")

    conf_dir = state_home / "dns"
    (conf_dir / "xfr").mkdir(parents=True, exist_ok=True)
    conf = conf_dir / "nsd.conf"
    text = _render(conf_dir, host, port, zones_dir, zones)
    tmp = conf.with_name(conf.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    try:
        _check([checkconf, str(tmp)], what=f"NSD config {conf}")
    except NsdSetupError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, conf)
    for name, path in zones.items():
        _check([checkzone, name, str(path)], what=f"zone {name} ({path})")

    return ServiceSpec(
        name="nsd",
        argv=[nsd, "-d", "-c", str(conf)],
        ready_port=(host, port),
        cwd=conf_dir,
        stop_timeout=_STOP_TIMEOUT,
    )


def _render(conf_dir: Path, host: str, port: int, zones_dir: Path, zones: dict[str, Path]) -> str:
    def q(value: object) -> str:
        text = str(value)
        if '"' in text or "\n" in text:
            raise NsdSetupError(f"cannot quote {text!r} in nsd.conf")
        return f'"{text}"'

    lines = [
        "# rendered by pipeline/localstack/nsd.py; edits are overwritten on the next start",
        "server:",
        f"    ip-address: {host}@{port}",
        f"    port: {port}",
        "    do-ip4: yes",
        "    do-ip6: no",
        "    reuseport: no",
        "    server-count: 1",
        '    username: ""',
        '    chroot: ""',
        f"    zonesdir: {q(zones_dir)}",
        '    database: ""',
        f"    pidfile: {q(conf_dir / 'nsd.pid')}",
        f"    xfrdfile: {q(conf_dir / 'xfrd.state')}",
        f"    xfrdir: {q(conf_dir / 'xfr')}",
        f"    zonelistfile: {q(conf_dir / 'zone.list')}",
        '    logfile: "/dev/stderr"',
        "    verbosity: 1",
        "    hide-version: yes",
        "    zonefiles-check: yes",
        "    zonefiles-write: 0",
        # no response rate limiting: every query comes from the loopback clients of this stack (a
        # site's resolver would not drop its own clients' answers); with it, a burst of connections
        # from new addresses (bench/connections.py) gets DNS timeouts and 451 at connect
        "    rrl-ratelimit: 0",
        "",
        "remote-control:",
        "    control-enable: no",
        "",
    ]
    for name, path in zones.items():
        lines += ["zone:", f"    name: {q(name)}", f"    zonefile: {q(path)}", ""]
    return "\n".join(lines)


def _check(argv: list[str], *, what: str) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=_CHECK_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NsdSetupError(f"{what}: could not run {argv[0]}: {exc}") from exc
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip()[-3000:]
        raise NsdSetupError(f"{what} rejected by {Path(argv[0]).name}:\n{output}")


def _binary(name: str) -> str:
    """Path of an NSD program (in /usr/sbin, often not on a user's PATH)."""
    found = shutil.which(name) or shutil.which(name, path=_SBIN)
    if found is None:
        raise NsdSetupError(f"{name} not found: apt-get install nsd")
    return found
