"""OpenLDAP slapd as the local stack's directory, holding the demo school.

The demo school is ``deploy/local/directory.ldif``.

`slapd_service` renders a ``slapd.conf`` (the static config format, started with ``-f``; nothing
from /etc/ldap/slapd.d is read), loads the LDIF into the database with ``slapadd`` the first time
and returns the `ServiceSpec` that runs ``slapd -d none -h ldap://host:port/ -f <conf>``: ``-d``
keeps slapd in the foreground (it does not fork) and logs to stderr; level ``none`` logs only
what slapd always logs (version, ``slapd starting``, shutdown, and errors such as a config error
or a port in use) and nothing per connection. ``-d 0`` would also stay in the foreground but
stays silent even when slapd fails to start. Layout under ``state_home``::

    ldap/slapd.conf   rendered config (mode 0600: it holds the rootpw hash)
    ldap/run/         slapd.pid, slapd.args
    ldap/data/        the mdb database; ``.loaded`` marks a completed slapadd

Directory: suffix ``dc=school,dc=test``, schemas core, cosine, inetorgperson, nis and misc from
``/etc/ldap/schema`` and ``deploy/local/poststelle.schema`` (the per-user settings). The rootdn
``cn=admin,dc=school,dc=test`` has the password `ROOT_PASSWORD` (``admin2026!``) and bypasses
access control. Everyone else, anonymous included, may search and read every entry and attribute
except ``userPassword``, which is only usable to bind; its owner may also change it (e.g. with the
password-modify extended operation), not read it. How people, aliases, groups, disabled accounts
and per-user settings are modelled is documented at the top of the LDIF.

Runs as the invoking user, root included (no ``-u``/``-g``): the config, the data and slapd are
all that user's. The LDIF is loaded only into an empty database; once ``.loaded`` exists the
database is used as it is, so changes to the LDIF need a fresh ``ldap/data``. A slapadd that
failed half-way leaves no marker, and the next start wipes the data dir and loads again.
"""
from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

from pipeline.localstack import ServiceSpec

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "LDIF",
    "ROOT_DN",
    "ROOT_PASSWORD",
    "SUFFIX",
    "SlapdSetupError",
    "ldap_url",
    "slapd_service",
    "ssha",
]

_REPO = Path(__file__).resolve().parents[2]
LDIF = _REPO / "deploy/local/directory.ldif"
OWN_SCHEMA = _REPO / "deploy/local/poststelle.schema"  # the per-user settings (pipeline.state.users)
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 3389
SUFFIX = "dc=school,dc=test"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PASSWORD = "admin2026!"  # demo only; the local stack listens on loopback

_SCHEMA_DIR = Path("/etc/ldap/schema")
_SCHEMAS = ("core", "cosine", "inetorgperson", "nis", "misc")
_MODULE_DIR = Path("/usr/lib/ldap")  # Debian builds the backends as modules
_LOADED = ".loaded"
_SBIN = "/usr/sbin:/usr/local/sbin"
_MAP_SIZE = 256 * 1024 * 1024  # mdb maxsize: address space, not disk; the demo uses ~100 KiB
_SLAPADD_TIMEOUT = 60.0
_STOP_TIMEOUT = 10.0


class SlapdSetupError(RuntimeError):
    """slapd cannot be prepared: not installed, or slapadd rejected the config or the LDIF."""


def slapd_service(state_home: Path, host: str, port: int, ldif: Path) -> ServiceSpec:
    """Render the slapd config under `state_home`, load `ldif` once, describe how to run slapd.

    Raises `ValueError` for a missing LDIF and `SlapdSetupError` when slapd is not installed or
    slapadd fails (its output is in the message).
    """
    state_home = Path(os.path.abspath(state_home))
    ldif = Path(os.path.abspath(ldif))
    if not ldif.is_file():
        raise ValueError(f"LDIF not found: {ldif}")
    slapd = _binary("slapd")
    slapadd = _binary("slapadd")
    missing = [s for s in _SCHEMAS if not (_SCHEMA_DIR / f"{s}.schema").is_file()]
    if missing:
        raise SlapdSetupError(f"OpenLDAP schemas missing in {_SCHEMA_DIR}: {', '.join(missing)}; "
                              "apt-get install slapd")

    ldap_dir = state_home / "ldap"
    run_dir = ldap_dir / "run"
    data_dir = ldap_dir / "data"
    conf = ldap_dir / "slapd.conf"
    for directory in (ldap_dir, run_dir, data_dir):
        directory.mkdir(parents=True, exist_ok=True)
    # the config holds the rootpw hash and the data the userPassword hashes
    for directory in (ldap_dir, data_dir):
        directory.chmod(0o700)

    text = _render(run_dir=run_dir, data_dir=data_dir, rootpw=ssha(ROOT_PASSWORD))
    tmp = conf.with_name(conf.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(tmp, conf)

    if not (data_dir / _LOADED).exists():
        _load(slapadd, conf, data_dir, ldif)

    return ServiceSpec(
        name="slapd",
        argv=[slapd, "-d", "none", "-h", ldap_url(host, port), "-f", str(conf)],
        ready_port=(host, port),
        cwd=ldap_dir,
        stop_timeout=_STOP_TIMEOUT,
    )


def ldap_url(host: str, port: int) -> str:
    """``ldap://host:port/``, with an IPv6 literal in brackets."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"ldap://{host}:{port}/"


def ssha(password: str, salt: bytes | None = None) -> str:
    """A ``{SSHA}`` userPassword value (salted SHA-1, as ``slappasswd -h {SSHA}`` makes)."""
    salt = os.urandom(8) if salt is None else salt
    digest = hashlib.sha1(password.encode("utf-8") + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode("ascii")


def _render(*, run_dir: Path, data_dir: Path, rootpw: str) -> str:
    includes = "\n".join([*(f"include {_SCHEMA_DIR / s}.schema" for s in _SCHEMAS), f"include {OWN_SCHEMA}"])
    module = ""
    if (_MODULE_DIR / "back_mdb.la").exists() or (_MODULE_DIR / "back_mdb.so").exists():
        module = f"modulepath {_MODULE_DIR}\nmoduleload back_mdb\n"
    return f"""\
# Rendered by pipeline.localstack.slapd; edits are overwritten at the next start.
{includes}

pidfile {run_dir}/slapd.pid
argsfile {run_dir}/slapd.args
{module}
database mdb
maxsize {_MAP_SIZE}
suffix "{SUFFIX}"
rootdn "{ROOT_DN}"
rootpw {rootpw}
directory {data_dir}
index objectClass eq
index uid,mail,mailLocalAddress eq
index member eq

# userPassword: usable to bind (auth); its owner may also change it (w; x is needed to check
# the old password in a password-modify request); readable by nobody but the rootdn.
# Everything else: readable by everyone, anonymous included. The rootdn bypasses these rules.
access to attrs=userPassword
    by self =xw
    by anonymous auth
    by * none
access to *
    by * read
"""


def _load(slapadd: str, conf: Path, data_dir: Path, ldif: Path) -> None:
    """slapadd `ldif` into a wiped `data_dir`; mark success with the ``.loaded`` file."""
    for child in data_dir.iterdir():
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()
    cmd = [slapadd, "-f", str(conf), "-b", SUFFIX, "-l", str(ldif)]
    try:
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=_SLAPADD_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise SlapdSetupError(f"slapadd did not finish within {_SLAPADD_TIMEOUT:.0f}s: "
                              f"{' '.join(cmd)}") from exc
    if done.returncode != 0:
        raise SlapdSetupError(f"slapadd failed with {done.returncode}: {' '.join(cmd)}\n"
                              f"{done.stdout[-3000:]}{done.stderr[-3000:]}")
    (data_dir / _LOADED).write_text(f"{ldif}\nloaded {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n",
                                    encoding="utf-8")


def _binary(name: str) -> str:
    """Path of an OpenLDAP program (in /usr/sbin, often not on a user's PATH)."""
    found = shutil.which(name) or shutil.which(name, path=_SBIN)
    if found is None:
        raise SlapdSetupError(f"{name} not found: apt-get install slapd ldap-utils")
    return found
