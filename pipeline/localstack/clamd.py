"""ClamAV's clamd as the local stack's virus scanner, with the project's own signatures only.

`clamd_service` copies the signature databases of ``deploy/local/clamav/`` (the EICAR test string
and a project signature that matches inside zip archives; no official signatures, no freshclam)
into ``<state_home>/clamd/db/``, renders ``<state_home>/clamd/clamd.conf`` and returns the
`ServiceSpec` that runs ``clamd -c <conf>`` with ``Foreground yes`` (it does not fork and logs to
its stderr, which the supervisor captures). Layout under ``state_home``::

    clamd/clamd.conf    rendered config (nothing from /etc/clamav is read)
    clamd/db/           the signature databases, copied afresh at every start
    clamd/clamd.sock    the unix socket (TCP is on host:port as well)
    clamd/clamd.pid     pid file
    clamd/tmp/          clamd's scratch space for unpacked archives

clamd answers on TCP ``host:port`` and on the unix socket. Readiness is clamd answering ``PONG``
to ``PING`` (`clamd_answers_ping`), not just an open port: clamd only answers once its databases
are loaded. With the two small databases here it starts in well under a second.

Limits: ``StreamMaxLength`` is the largest INSTREAM clamd accepts (the virus stage's
``stream_max_length`` must not exceed it); ``AlertExceedsMax yes`` turns a scan cut short by
``MaxScanSize``, ``MaxFileSize``, ``MaxRecursion``, ``MaxFiles`` or ``MaxScanTime`` into a
``Heuristics.Limits.Exceeded.*`` finding instead of a silent ``OK``. Runs as the invoking user,
root included (no ``User``): clamd only reads the databases and the streams it is sent.
"""
from __future__ import annotations

import os
import shutil
import socket
from functools import partial
from pathlib import Path

from pipeline.localstack import ServiceSpec

__all__ = [
    "DATABASE_SUFFIXES",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DEFAULT_STREAM_MAX_LENGTH",
    "SIGNATURES_DIR",
    "ClamdLimits",
    "ClamdSetupError",
    "clamd_answers_ping",
    "clamd_service",
    "socket_path",
]

_REPO = Path(__file__).resolve().parents[2]
SIGNATURES_DIR = _REPO / "deploy/local/clamav"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 3310
DEFAULT_STREAM_MAX_LENGTH = 32 * 1024 * 1024  # above ingress.max_message_size (25 MiB) plus trace headers
# the database formats clamd loads from a directory (ClamAV manual, "Signatures")
DATABASE_SUFFIXES = (".ndb", ".ldb", ".hdb", ".hsb", ".mdb", ".msb", ".cdb", ".ign2", ".fp", ".sfp",
                     ".yar", ".yara", ".ftm", ".idb", ".pdb", ".wdb", ".cfg")
_SBIN = "/usr/sbin:/usr/local/sbin:/sbin"
_STOP_TIMEOUT = 10.0
_PING_TIMEOUT = 1.0
_SOCKET_PATH_MAX = 107  # sun_path minus the terminating NUL


class ClamdSetupError(RuntimeError):
    """clamd cannot be started: not installed, no signature database, or a socket path too long."""


class ClamdLimits:
    """Scan limits written into clamd.conf (clamd's own names; sizes in bytes, time in ms)."""

    MAX_SCAN_SIZE = 200 * 1024 * 1024  # data scanned per stream, unpacked archive members included
    MAX_RECURSION = 16  # archive/mail nesting
    MAX_FILES = 10_000  # files unpacked per stream
    MAX_SCAN_TIME_MS = 120_000


def socket_path(state_home: Path) -> Path:
    """Where clamd's unix socket is: ``<state_home>/clamd/clamd.sock``."""
    return Path(os.path.abspath(state_home)) / "clamd" / "clamd.sock"


def clamd_service(state_home: Path, host: str, port: int, signatures_dir: Path = SIGNATURES_DIR,
                  stream_max_length: int = DEFAULT_STREAM_MAX_LENGTH) -> ServiceSpec:
    """Copy the signatures and render the clamd config under `state_home`; describe how to run clamd.

    Raises `ClamdSetupError` when clamd is not installed, `signatures_dir` holds no database, or
    the unix socket path would be too long for the kernel.
    """
    if stream_max_length <= 0:
        raise ClamdSetupError(f"stream_max_length must be positive, got {stream_max_length}")
    clamd = _binary("clamd")
    state_home = Path(os.path.abspath(state_home))
    clamd_dir = state_home / "clamd"
    db_dir = clamd_dir / "db"
    tmp_dir = clamd_dir / "tmp"
    sock = socket_path(state_home)
    if len(str(sock).encode()) > _SOCKET_PATH_MAX:
        raise ClamdSetupError(f"unix socket path too long ({len(str(sock))} bytes): {sock}")
    for directory in (clamd_dir, db_dir, tmp_dir):
        directory.mkdir(parents=True, exist_ok=True)
    _install_databases(Path(signatures_dir), db_dir)

    conf = clamd_dir / "clamd.conf"
    text = _render(clamd_dir=clamd_dir, db_dir=db_dir, tmp_dir=tmp_dir, sock=sock, host=host, port=port,
                   stream_max_length=stream_max_length)
    tmp = conf.with_name(conf.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, conf)
    return ServiceSpec(
        name="clamd",
        argv=[clamd, "-c", str(conf)],
        ready_port=(host, port),
        ready_probe=partial(clamd_answers_ping, host, port),
        cwd=clamd_dir,
        stop_timeout=_STOP_TIMEOUT,
    )


def clamd_answers_ping(host: str, port: int, timeout: float = _PING_TIMEOUT) -> bool:
    """True when clamd at host:port answers ``zPING`` with ``PONG`` (its databases are loaded)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.sendall(b"zPING\0")
            answer = b""
            while not answer.endswith(b"\0") and len(answer) < 64:
                chunk = conn.recv(64)
                if not chunk:
                    break
                answer += chunk
    except OSError:
        return False
    return answer.rstrip(b"\0") == b"PONG"


def _install_databases(source: Path, db_dir: Path) -> None:
    """Replace the databases in `db_dir` by those in `source` (a removed signature goes too)."""
    if not source.is_dir():
        raise ClamdSetupError(f"signature directory not found: {source}")
    databases = sorted(p for p in source.iterdir() if p.is_file() and p.suffix in DATABASE_SUFFIXES)
    if not databases:
        raise ClamdSetupError(f"no signature database ({', '.join(DATABASE_SUFFIXES)}) in {source}")
    for old in db_dir.iterdir():
        if old.is_file():
            old.unlink()
    for database in databases:
        shutil.copyfile(database, db_dir / database.name)


def _render(*, clamd_dir: Path, db_dir: Path, tmp_dir: Path, sock: Path, host: str, port: int,
            stream_max_length: int) -> str:
    for value in (clamd_dir, db_dir, tmp_dir, sock, host):
        if any(c in str(value) for c in "\n\r\"#"):
            raise ClamdSetupError(f"cannot write {value!r} into clamd.conf")
    limits = ClamdLimits
    return f"""\
# Rendered by pipeline/localstack/clamd.py; edits are overwritten at the next start.
Foreground yes
LogTime yes
LogClean no
LogVerbose no
PidFile {clamd_dir / 'clamd.pid'}
TemporaryDirectory {tmp_dir}
DatabaseDirectory {db_dir}
OfficialDatabaseOnly no
Bytecode no
SelfCheck 3600

LocalSocket {sock}
LocalSocketMode 660
FixStaleSocket yes
TCPAddr {host}
TCPSocket {port}
MaxThreads 4
MaxQueue 100
MaxConnectionQueueLength 30
ReadTimeout 30
CommandReadTimeout 10
SendBufTimeout 500
IdleTimeout 30

# the largest INSTREAM accepted; the virus stage's stream_max_length must not exceed it
StreamMaxLength {stream_max_length}
MaxFileSize {stream_max_length}
MaxScanSize {max(limits.MAX_SCAN_SIZE, stream_max_length)}
MaxRecursion {limits.MAX_RECURSION}
MaxFiles {limits.MAX_FILES}
MaxScanTime {limits.MAX_SCAN_TIME_MS}
# a scan cut short by a limit is reported as Heuristics.Limits.Exceeded.*, never as OK
AlertExceedsMax yes

ScanArchive yes
ScanMail yes
ScanHTML yes
ScanPE yes
ScanELF yes
ScanOLE2 yes
ScanPDF yes
HeuristicAlerts yes
"""


def _binary(name: str) -> str:
    """Path of clamd (in /usr/sbin, often not on a user's PATH)."""
    found = shutil.which(name) or shutil.which(name, path=_SBIN)
    if found is None:
        raise ClamdSetupError(f"{name} not found: apt-get install clamav-daemon")
    return found
