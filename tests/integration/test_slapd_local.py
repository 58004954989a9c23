"""The local slapd from pipeline.localstack.slapd with the demo school, run for real.

Needs the Debian package slapd. Each test starts its own slapd on a free port in a fresh state
directory and stops (or, failing that, kills) it at teardown; the lookups are the ones a mail
gateway makes: recipient and alias, group expansion, disabled account, AUTH bind.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import ldap3
import pytest
from ldap3.utils.conv import escape_filter_chars

from pipeline.localstack import ServiceSpec
from pipeline.localstack.slapd import (
    LDIF,
    ROOT_DN,
    ROOT_PASSWORD,
    SUFFIX,
    SlapdSetupError,
    slapd_service,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("slapd", path="/usr/sbin:/usr/bin") is None,
                       reason="slapd not installed"),
]

PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"
LENA_DN = f"uid=lena.mueller,{PEOPLE}"
# a recipient address: its mailbox, or an alias of one, or a group
RECIPIENT_FILTER = "(|(mail={0})(mailLocalAddress={0}))"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    """A started slapd: its process, spec, log and how long it took to listen."""

    def __init__(self, spec: ServiceSpec, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.spec = spec
        self.proc = proc
        self.log = log
        self.ready_after = 0.0

    @property
    def server(self) -> ldap3.Server:
        host, port = self.spec.ready_port  # type: ignore[misc]
        return ldap3.Server(host, port=port, get_info=ldap3.NONE, connect_timeout=5)

    def connect(self, user: str | None = None, password: str | None = None) -> ldap3.Connection:
        """A bound connection: anonymous without `user`."""
        return ldap3.Connection(self.server, user=user, password=password, auto_bind=True,
                                receive_timeout=10, raise_exceptions=False)

    def wait_ready(self, timeout: float = 15.0) -> None:
        host, port = self.spec.ready_port  # type: ignore[misc]
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise AssertionError(f"slapd exited early with {self.proc.returncode}:\n"
                                     + self.log.read_text(errors="replace"))
            try:
                with socket.create_connection((host, port), timeout=0.5) as probe:
                    # a free port from the ephemeral range can be picked as the probe's own
                    # local port: TCP then connects the socket to itself, with nobody listening
                    if probe.getsockname() != probe.getpeername():
                        self.ready_after = time.monotonic() - started
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise AssertionError(f"slapd did not listen on {host}:{port} within {timeout}s")

    def stop(self, timeout: float = 10.0) -> float:
        """SIGTERM, wait; returns seconds until exit (kills and fails beyond `timeout`)."""
        if self.proc.poll() is not None:
            return 0.0
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own session, see start
            self.proc.wait()
            raise AssertionError(f"slapd did not exit within {timeout}s of SIGTERM") from None
        return time.monotonic() - started


@pytest.fixture
def state_home() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="pst-ldap-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def start_slapd(state_home: Path) -> Iterator[Callable[..., Running]]:
    """Start slapd (demo LDIF by default); whatever was started is stopped or killed at teardown."""
    started: list[Running] = []

    def start(ldif: Path = LDIF) -> Running:
        port = _free_port()
        setup = time.monotonic()
        spec = slapd_service(state_home, "127.0.0.1", port, ldif)
        print(f"slapd_service (config, slapadd on first start): {time.monotonic() - setup:.3f}s")
        assert spec.argv[1:3] == ["-d", "none"]
        assert spec.ready_port == ("127.0.0.1", port)
        log = state_home / "slapd.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(spec.argv, cwd=spec.cwd, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT,
                                    env={**spec.env, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                                    start_new_session=True)
        running = Running(spec, proc, log)
        started.append(running)
        running.wait_ready()
        print(f"slapd listening {running.ready_after:.4f}s after exec")
        return running

    try:
        yield start
    finally:
        for running in started:
            try:
                running.stop()
            except AssertionError:
                pass
            finally:
                if running.proc.poll() is None:
                    os.killpg(running.proc.pid, signal.SIGKILL)
                    running.proc.wait()
            # shown by pytest only when the test failed
            print(f"--- {running.log}\n" + running.log.read_text(errors="replace"))


@pytest.fixture
def slapd(start_slapd: Callable[..., Running]) -> Running:
    return start_slapd()


def _search(conn: ldap3.Connection, flt: str, base: str = SUFFIX, attributes=("mail",),
            scope=ldap3.SUBTREE) -> list:
    conn.search(base, flt, search_scope=scope, attributes=list(attributes))
    assert conn.result["description"] == "success", conn.result
    return list(conn.entries)


def _returned(conn: ldap3.Connection, dn: str) -> set[str]:
    """Names of the attributes the server returned for `dn` in the last search (lower case).

    ldap3 lists every requested attribute, with no values when the server sent none.
    """
    for item in conn.response:
        if item.get("type") == "searchResEntry" and item["dn"] == dn:
            return {name.lower() for name, values in item["raw_attributes"].items() if values}
    raise AssertionError(f"{dn} not in the last search result")


def _resolve(conn: ldap3.Connection, address: str) -> list:
    flt = RECIPIENT_FILTER.format(escape_filter_chars(address))
    return _search(conn, flt, attributes=("objectClass", "mail", "member", "shadowExpire"))


def test_recipient_lookup_finds_one_mailbox(slapd: Running) -> None:
    conn = slapd.connect()
    entries = _search(conn, "(mail=max.mustermann@school.test)",
                      attributes=("mail", "uid", "employeeType"))
    assert len(entries) == 1
    assert entries[0].entry_dn == f"uid=max.mustermann,{PEOPLE}"
    assert entries[0].mail.values == ["max.mustermann@school.test"]
    assert entries[0].employeeType.value == "student"
    # addresses match case-insensitively, like mail domains and (here) local parts
    assert len(_resolve(conn, "Max.Mustermann@School.TEST")) == 1
    assert _resolve(conn, "nobody.here@school.test") == []
    conn.unbind()


def test_group_resolves_to_member_addresses(slapd: Running) -> None:
    conn = slapd.connect()
    found = _resolve(conn, "9a@school.test")
    assert len(found) == 1
    group = found[0]
    assert "groupOfNames" in group.objectClass.values
    addresses = set()
    for dn in group.member.values:
        member = _search(conn, "(objectClass=*)", base=dn, scope=ldap3.BASE)
        addresses.update(member[0].mail.values)
    assert addresses == {"max.mustermann@school.test", "lena.mueller@school.test"}
    # the class teacher is the owner of the class list
    owner = _search(conn, "(mail=9a@school.test)", base=GROUPS, attributes=("owner",))
    assert owner[0].owner.values == [f"uid=anna.schmidt,{PEOPLE}"]
    for name, members in {"9b": 1, "staff": 1, "parents": 2}.items():
        (entry,) = _resolve(conn, f"{name}@school.test")
        assert len(entry.member.values) == members, name
    conn.unbind()


def test_alias_resolves_to_its_mailbox(slapd: Running) -> None:
    conn = slapd.connect()
    found = _resolve(conn, "sekretariat@school.test")
    assert len(found) == 1
    assert found[0].entry_dn == f"uid=anna.schmidt,{PEOPLE}"
    # the mailbox to deliver to is the entry's single `mail` value
    assert found[0].mail.values == ["anna.schmidt@school.test"]
    conn.unbind()


def test_disabled_account_is_recognisable(slapd: Running) -> None:
    conn = slapd.connect()
    today = int(time.time() // 86400)

    def disabled(entry) -> bool:
        expire = entry.shadowExpire.value if "shadowExpire" in entry else None
        return expire is not None and int(expire) != -1 and int(expire) <= today

    (old,) = _resolve(conn, "old.student@school.test")
    assert int(old.shadowExpire.value) == 20300  # 2025-07-31
    assert disabled(old)
    people = _search(conn, "(objectClass=inetOrgPerson)", base=PEOPLE,
                     attributes=("mail", "shadowExpire"))
    # hausmeister has no mail (a member without a mailbox); it.admin; paul, ex.schueler, lisa: routing
    assert len(people) == 12
    assert {e.mail.value for e in people if disabled(e)} == {"old.student@school.test"}
    # nis.schema gives shadowExpire no ORDERING rule, so (shadowExpire<=N) is Undefined in
    # slapd: find candidates with a presence filter and compare the day number client-side
    assert _search(conn, f"(shadowExpire<={today})", base=PEOPLE) == []
    candidates = _search(conn, "(shadowExpire=*)", base=PEOPLE, attributes=("mail", "shadowExpire"))
    assert [e.mail.value for e in candidates if disabled(e)] == ["old.student@school.test"]
    conn.unbind()
    # slapd does not enforce shadowExpire: the gateway has to check it, for AUTH too
    assert slapd.connect(f"uid=old.student,{PEOPLE}", "Old2026!").bound


def test_bind_with_password(slapd: Running) -> None:
    good = slapd.connect(LENA_DN, "Lena2026!")
    assert good.bound
    assert good.extend.standard.who_am_i() == f"dn:{LENA_DN}"
    good.unbind()
    for user, password in ((LENA_DN, "lena2026!"), (LENA_DN, "Anna2026!"),
                           (f"uid=nobody,{PEOPLE}", "Lena2026!")):
        conn = ldap3.Connection(slapd.server, user=user, password=password, receive_timeout=10,
                                raise_exceptions=False)
        assert conn.bind() is False
        assert conn.result["description"] == "invalidCredentials", conn.result
    # an empty password would be an unauthenticated (anonymous) bind: ldap3 refuses to send it
    with pytest.raises(ldap3.core.exceptions.LDAPPasswordIsMandatoryError):
        ldap3.Connection(slapd.server, user=LENA_DN, password="").bind()
    admin = slapd.connect(ROOT_DN, ROOT_PASSWORD)
    assert admin.bound


def test_filter_metacharacters_are_escaped(slapd: Running) -> None:
    conn = slapd.connect()
    # unescaped, the first would be a wildcard matching every address in the school
    assert len(_search(conn, "(mail=*@school.test)")) > 10
    for address in ("*@school.test", '"*)(uid=*"@school.test'):
        assert _resolve(conn, address) == [], address
    conn.unbind()


def test_user_password_is_not_readable(slapd: Running) -> None:
    max_dn = f"uid=max.mustermann,{PEOPLE}"
    anonymous = slapd.connect()
    _search(anonymous, "(mail=max.mustermann@school.test)", attributes=("*", "userPassword"))
    returned = _returned(anonymous, max_dn)
    assert "mail" in returned and "cn" in returned
    assert "userpassword" not in returned
    # nor searchable: a filter on it is evaluated as Undefined
    assert _search(anonymous, "(userPassword=*)") == []
    # another user cannot read it either, nor its owner (who may only change it); the rootdn can
    lena = slapd.connect(LENA_DN, "Lena2026!")
    _search(lena, "(mail=max.mustermann@school.test)", attributes=("userPassword",))
    assert "userpassword" not in _returned(lena, max_dn)
    _search(lena, "(mail=lena.mueller@school.test)", attributes=("userPassword",))
    assert "userpassword" not in _returned(lena, LENA_DN)  # self: auth and write, no read
    assert lena.extend.standard.modify_password(LENA_DN, "Lena2026!", "Neu2026!"), lena.result
    assert slapd.connect(LENA_DN, "Neu2026!").bound
    admin = slapd.connect(ROOT_DN, ROOT_PASSWORD)
    _search(admin, "(mail=max.mustermann@school.test)", attributes=("userPassword",))
    (value,) = admin.response[0]["raw_attributes"]["userPassword"]
    assert value.startswith(b"{SSHA}")
    for conn in (anonymous, lena, admin):
        conn.unbind()


def test_sigterm_stops_slapd_and_data_survives_a_restart(
    start_slapd: Callable[..., Running], state_home: Path
) -> None:
    first = start_slapd()
    admin = first.connect(ROOT_DN, ROOT_PASSWORD)
    assert admin.modify(f"uid=tom.becker,{PEOPLE}",
                        {"description": [(ldap3.MODIFY_REPLACE, ["changed at runtime"])]})
    admin.unbind()
    took = first.stop(timeout=10.0)
    print(f"slapd stopped {took:.2f}s after SIGTERM, exit status {first.proc.returncode}")
    assert took < 10.0
    assert first.proc.returncode == 0

    # the LDIF is loaded only into an empty database: the runtime change is still there
    second = start_slapd()
    conn = second.connect()
    (tom,) = _search(conn, "(mail=tom.becker@school.test)", attributes=("description",))
    assert tom.description.value == "changed at runtime"
    conn.unbind()
    assert second.stop(timeout=10.0) < 10.0


def test_broken_ldif_is_reported(state_home: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.ldif"
    broken.write_text(f"dn: {SUFFIX}\nobjectClass: organization\no: x\n\n"
                      f"dn: uid=x,{PEOPLE}\nobjectClass: noSuchClass\nuid: x\n")
    with pytest.raises(SlapdSetupError, match="slapadd failed"):
        slapd_service(state_home, "127.0.0.1", _free_port(), broken)
    assert not (state_home / "ldap/data/.loaded").exists()
    # the next start wipes the half-loaded database and loads again
    slapd_service(state_home, "127.0.0.1", _free_port(), LDIF)
    assert (state_home / "ldap/data/.loaded").exists()
    with pytest.raises(ValueError, match="LDIF not found"):
        slapd_service(state_home, "127.0.0.1", _free_port(), tmp_path / "missing.ldif")
