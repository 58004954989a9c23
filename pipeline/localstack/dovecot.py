"""Dovecot as the local stack's mailbox server: LMTP only, Maildir under the state directory.

`dovecot_service` renders ``deploy/local/dovecot/dovecot.conf.in`` into
``<state_home>/dovecot/dovecot.conf``, prepares the directories Dovecot needs and returns the
`ServiceSpec` that runs ``dovecot -F -c <conf>`` in the foreground. Layout under ``state_home``::

    dovecot/dovecot.conf   rendered config (nothing from /etc/dovecot is read)
    dovecot/run/           Dovecot's base_dir: unix sockets, master.pid
    dovecot/lib/           Dovecot's state_dir
    dovecot/dovecot.log    suggested capture file for the child's stderr, where Dovecot logs
    mail/<domain>/<user>/  one Maildir per mailbox (see `maildir_of`)

Who writes the mail: Dovecot refuses to access mail as uid 0. Started as root, mail is written as
the system user ``mail`` (uid 8 on Debian) and Dovecot's helpers run as ``dovecot``/``dovenull``
from the Debian package. Started as another user, Dovecot cannot change uid, so everything runs as
that user. Either way the mail user must be able to traverse every directory above
``state_home/mail`` and Dovecot's auth process must be able to read the users file; this is
checked here, because Dovecot would only report it per delivery.
"""
from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from string import Template

from pipeline.localstack import ServiceSpec

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "TEMPLATE",
    "USERS_FILE",
    "dovecot_service",
    "maildir_of",
]

_REPO = Path(__file__).resolve().parents[2]
TEMPLATE = _REPO / "deploy/local/dovecot/dovecot.conf.in"
USERS_FILE = _REPO / "deploy/local/dovecot/users"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 2424

# system users when started as root (Debian: mail is uid 8; dovecot-core creates the other two)
_MAIL_USER = "mail"
_INTERNAL_USER = "dovecot"
_LOGIN_USER = "dovenull"
# sun_path holds 108 bytes including the terminating NUL; the longest socket Dovecot 2.3 creates
# below its base_dir is token-login/tokenlogin
_SOCKET_PATH_MAX = 107
_LONGEST_SOCKET = "token-login/tokenlogin"
# 2.3 needs a few seconds to stop its children after SIGTERM
_STOP_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class _Identity:
    """Unix accounts Dovecot runs as: the mail writer and its own helper processes."""

    mail_uid: int
    mail_gid: int
    internal_user: str
    internal_group: str
    login_user: str


def dovecot_service(state_home: Path, host: str, port: int, users_file: Path,
                    extra_ports: tuple[int, ...] = ()) -> ServiceSpec:
    """Render the Dovecot config under `state_home` and describe how to run Dovecot.

    `extra_ports`: more LMTP listeners on `host` (a second mailbox store in the local stack is this
    Dovecot on a port of its own: a destination with a sink of its own, the same mail dir).

    Creates ``state_home/dovecot/{run,lib}`` and the mail dir ``state_home/mail`` (owned by the
    mail user when running as root). Raises `ValueError` when the paths cannot work: a socket path
    over the unix limit, a mail dir the mail user cannot reach, an unreadable users file.
    """
    state_home = Path(os.path.abspath(state_home))
    users_file = Path(os.path.abspath(users_file))
    conf_dir = state_home / "dovecot"
    run_dir = conf_dir / "run"
    mail_dir = state_home / "mail"
    conf = conf_dir / "dovecot.conf"

    longest = run_dir / _LONGEST_SOCKET
    if len(os.fsencode(longest)) > _SOCKET_PATH_MAX:
        raise ValueError(
            f"state directory too deep for unix sockets: {longest} is longer than "
            f"{_SOCKET_PATH_MAX} bytes; use a shorter state_home"
        )
    if not users_file.is_file():
        raise ValueError(f"Dovecot users file not found: {users_file}")

    ident = _identity()
    for directory in (conf_dir, run_dir, conf_dir / "lib", mail_dir):
        directory.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(mail_dir, ident.mail_uid, ident.mail_gid)
        internal = pwd.getpwnam(ident.internal_user)
        _require_access(mail_dir, ident.mail_uid, ident.mail_gid, os.W_OK | os.X_OK,
                        what="mail dir for the mail user")
        _require_access(users_file, internal.pw_uid, internal.pw_gid, os.R_OK,
                        what=f"users file for Dovecot's auth process ({ident.internal_user})")
    _remove_stale_pidfile(run_dir / "master.pid", conf)

    text = Template(TEMPLATE.read_text(encoding="utf-8")).substitute(
        host=host,
        port=port,
        state_dir=conf_dir,
        mail_dir=mail_dir,
        users_file=users_file,
        mail_uid=ident.mail_uid,
        mail_gid=ident.mail_gid,
        internal_user=ident.internal_user,
        internal_group=ident.internal_group,
        login_user=ident.login_user,
        anvil_chroot="empty" if os.geteuid() == 0 else "",
        extra_listeners="".join(f"  inet_listener lmtp_{n} {{\n    address = {host}\n    port = {n}\n  }}\n"
                                for n in extra_ports),
    )
    tmp = conf.with_name(conf.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, conf)

    return ServiceSpec(
        name="dovecot",
        argv=[_dovecot_binary(), "-F", "-c", str(conf)],
        ready_port=(host, port),
        cwd=conf_dir,
        stop_timeout=_STOP_TIMEOUT,
    )


def maildir_of(state_home: Path, address: str) -> Path:
    """The Maildir root of `address` (new mail appears in its ``new/``).

    Mirrors the config: user names are lower-cased (``auth_username_format = %Lu``) and a
    ``+detail`` is dropped (``lmtp_save_to_detail_mailbox = no``), so ``Max+x@School.test`` and
    ``max@school.test`` share one Maildir.
    """
    local, sep, domain = address.strip().lower().rpartition("@")
    local = local.split("+", 1)[0]
    if not sep or not local or not domain or "/" in address or local in (".", ".."):
        raise ValueError(f"not a mailbox address: {address!r}")
    return Path(os.path.abspath(state_home)) / "mail" / domain / local


def _identity() -> _Identity:
    """Pick the accounts: system users as root, the invoking user otherwise."""
    if os.geteuid() == 0:
        mail = pwd.getpwnam(_MAIL_USER)
        internal = _INTERNAL_USER if _user_exists(_INTERNAL_USER) else _MAIL_USER
        return _Identity(
            mail_uid=mail.pw_uid,
            mail_gid=mail.pw_gid,
            internal_user=internal,
            internal_group=grp.getgrgid(pwd.getpwnam(internal).pw_gid).gr_name,
            login_user=_LOGIN_USER if _user_exists(_LOGIN_USER) else _MAIL_USER,
        )
    me = pwd.getpwuid(os.geteuid())
    return _Identity(
        mail_uid=me.pw_uid,
        mail_gid=me.pw_gid,
        internal_user=me.pw_name,
        internal_group=grp.getgrgid(me.pw_gid).gr_name,
        login_user=me.pw_name,
    )


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _require_access(path: Path, uid: int, gid: int, mode: int, *, what: str) -> None:
    """Raise ValueError unless `uid` can reach `path` and use it with `mode` (R_OK/W_OK/X_OK).

    Mode bits only (owner, primary and supplementary groups, others); ACLs are not considered.
    """
    name = pwd.getpwuid(uid).pw_name
    groups = set(os.getgrouplist(name, gid))

    def allowed(p: Path, want: int) -> bool:
        st = p.stat()
        if st.st_uid == uid:
            shift = 6
        elif st.st_gid in groups:
            shift = 3
        else:
            shift = 0
        bits = (st.st_mode >> shift) & 0o7
        return bits & want == want

    for parent in reversed(path.parents):
        if not allowed(parent, os.X_OK):
            raise ValueError(
                f"{what}: {name} (uid {uid}) cannot enter {parent} "
                f"(mode {stat.filemode(parent.stat().st_mode)}); {path} is unreachable"
            )
    if not allowed(path, mode):
        raise ValueError(f"{what}: {name} (uid {uid}) lacks access to {path}")


def _remove_stale_pidfile(pidfile: Path, conf: Path) -> None:
    """Drop a master.pid left by a killed Dovecot whose pid now belongs to another process.

    Dovecot refuses to start while the pid in it is alive, whoever it is.
    """
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return  # no such process: Dovecot handles that itself
    if os.fsencode(conf) not in cmdline.split(b"\0"):
        pidfile.unlink(missing_ok=True)


def _dovecot_binary() -> str:
    """Path of the dovecot master binary (in /usr/sbin, often not on a user's PATH)."""
    found = shutil.which("dovecot") or shutil.which("dovecot", path="/usr/sbin:/usr/local/sbin")
    return found or "/usr/sbin/dovecot"
