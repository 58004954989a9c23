"""pipeline.clients.directory against the real slapd with the demo school (fixtures in conftest.py)."""
from __future__ import annotations

import socket
import time
from types import SimpleNamespace

import ldap3
import pytest

from pipeline.clients.directory import Account, Directory, DirectoryUnavailable
from pipeline.localstack.slapd import ROOT_DN, ROOT_PASSWORD
from pipeline.settings import LdapSettings
from tests.servers import SLAPD_HOST, SlapdServer

PEOPLE = "ou=people,dc=school,dc=test"
GROUPS = "ou=groups,dc=school,dc=test"
ANNA = "anna.schmidt@school.test"
MAX = "max.mustermann@school.test"
LENA = "lena.mueller@school.test"
TOM = "tom.becker@school.test"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def admin(server: SlapdServer) -> ldap3.Connection:
    return ldap3.Connection(ldap3.Server(SLAPD_HOST, port=server.port, get_info=ldap3.NONE),
                            user=ROOT_DN, password=ROOT_PASSWORD, auto_bind=True, receive_timeout=5)


# ---- lookup -------------------------------------------------------------------------------------------


async def test_lookup_finds_a_person_by_mailbox(directory: Directory) -> None:
    entry = await directory.lookup(MAX)
    assert entry is not None
    assert (entry.kind, entry.dn, entry.mail, entry.uid) == ("person", f"uid=max.mustermann,{PEOPLE}", MAX,
                                                             "max.mustermann")
    assert entry.aliases == () and not entry.disabled
    assert entry.addresses == {MAX}


async def test_lookup_finds_the_person_behind_an_alias(directory: Directory) -> None:
    entry = await directory.lookup("sekretariat@school.test")
    assert entry is not None
    assert entry.dn == f"uid=anna.schmidt,{PEOPLE}"
    assert entry.mail == ANNA
    assert entry.addresses == {ANNA, "sekretariat@school.test"}


async def test_lookup_finds_a_group(directory: Directory) -> None:
    entry = await directory.lookup("9a@school.test")
    assert entry is not None
    assert (entry.kind, entry.cn, entry.mail) == ("group", "9a", "9a@school.test")
    assert set(entry.members) == {f"uid=max.mustermann,{PEOPLE}", f"uid=lena.mueller,{PEOPLE}"}


async def test_lookup_ignores_case(directory: Directory) -> None:
    entry = await directory.lookup("Max.Mustermann@School.TEST")
    assert entry is not None and entry.mail == MAX
    assert (await directory.lookup("SEKRETARIAT@school.test")).mail == ANNA


async def test_unknown_address_is_none(directory: Directory) -> None:
    assert await directory.lookup("nobody.here@school.test") is None
    assert directory.requests == 1
    for not_an_address in ("", "max.mustermann", "   "):
        assert await directory.lookup(not_an_address) is None
    assert directory.requests == 1  # asked nobody


async def test_disabled_account_is_marked(directory: Directory) -> None:
    old = await directory.lookup("old.student@school.test")
    assert old is not None and old.kind == "person" and old.disabled
    assert not (await directory.lookup(ANNA)).disabled


@pytest.mark.parametrize("address", [
    "*@school.test",
    '"*)(uid=*"@school.test',
    "*@*",
    "max.mustermann@school.test)(mail=*",
    "*)(objectClass=*))(|(mail=*@school.test",
    "max.mustermann@school.tes\\2a",
])
async def test_filter_metacharacters_match_nothing(directory: Directory, address: str) -> None:
    assert await directory.lookup(address) is None
    assert await directory.member_of(address) == frozenset()
    assert directory.requests == 1  # the server was asked, and found nothing


@pytest.mark.parametrize("address", ["max.mustermann@school.test\x00", "max.mustermann@school.test\r\n",
                                     "max mustermann@school.test"])
async def test_control_characters_are_no_address(directory: Directory, address: str) -> None:
    # slapd itself would match the first one to max (it drops the NUL): never ask it
    assert await directory.lookup(address) is None
    assert directory.requests == 0


# ---- groups -------------------------------------------------------------------------------------------


ANNA_GROUPS = {"staff", "staff@school.test", "verwaltung", "verwaltung@school.test",  # uniqueMember
               "elternbeirat", "elternbeirat@school.test"}  # rfc822MailMember names her alias
MAX_GROUPS = {"9a", "9a@school.test", "jahrgang9", "jahrgang9@school.test",  # 9a is in jahrgang9
              "informatik-ag", "informatik-ag@school.test"}  # memberUid


async def test_member_of_names_the_groups_by_cn_and_mail(directory: Directory) -> None:
    assert await directory.member_of(ANNA) == ANNA_GROUPS
    assert await directory.member_of("Sekretariat@School.test") == ANNA_GROUPS
    assert await directory.member_of(MAX) == MAX_GROUPS
    assert await directory.member_of("eltern.mueller@school.test") == {"parents", "parents@school.test"}
    assert await directory.member_of("nobody@school.test") == frozenset()
    assert await directory.member_of("9a@school.test") == {"jahrgang9", "jahrgang9@school.test"}
    assert await directory.member_of("parents@school.test") == frozenset()  # no group holds it


async def test_every_group_model_is_found_by_its_address(directory: Directory) -> None:
    for address, cn in (("verwaltung@school.test", "verwaltung"), ("informatik-ag@school.test", "informatik-ag"),
                        ("elternbeirat@school.test", "elternbeirat")):
        entry = await directory.lookup(address)
        assert entry is not None and (entry.kind, entry.cn) == ("group", cn), address
    verwaltung = await directory.lookup("verwaltung@school.test")
    assert verwaltung.members == (f"uid=anna.schmidt,{PEOPLE}", f"uid=hausmeister,{PEOPLE}")  # UID part dropped
    assert (await directory.lookup("informatik-ag@school.test")).member_uids == ("max.mustermann", "tom.becker",
                                                                                 "old.student")
    assert (await directory.lookup("elternbeirat@school.test")).member_addresses == (
        "eltern.mustermann@school.test", "sekretariat@school.test")
    assert (await directory.lookup("9a@school.test")).owner == f"uid=anna.schmidt,{PEOPLE}"


async def test_entries_and_people_by_uid_in_batches(directory: Directory) -> None:
    dns = [f"uid=max.mustermann,{PEOPLE}", f"cn=9b,{GROUPS}", f"uid=nobody,{PEOPLE}", "not a dn"]
    found = await directory.entries(dns)
    assert [(e.kind, e.mail) if e else None for e in found.values()] == [
        ("person", MAX), ("group", "9b@school.test"), None, None]
    asked = directory.requests
    assert (await directory.entries(dns[:2])) == {dn: found[dn] for dn in dns[:2]}
    assert directory.requests == asked  # cached
    people = await directory.people_by_uid(["tom.becker", "Tom.Becker", "nobody"])
    assert people["tom.becker"].mail == TOM
    assert people["Tom.Becker"] is None and people["nobody"] is None  # memberUid matches exactly


async def test_member_of_through_nested_groups_and_loops(own_slapd: SlapdServer) -> None:
    conn = admin(own_slapd)
    # school = {staff, 9a, loop-b}; loop-b = {school}: a loop
    for cn, mail, members in (
        ("school", "school-all@school.test", [f"cn=staff,{GROUPS}", f"cn=9a,{GROUPS}", f"cn=loop-b,{GROUPS}"]),
        ("loop-b", "loop-b@school.test", [f"cn=school,{GROUPS}"]),
    ):
        assert conn.add(f"cn={cn},{GROUPS}", ["groupOfNames", "extensibleObject"],
                        {"cn": cn, "mail": mail, "member": members}), conn.result
    conn.unbind()

    directory = own_slapd.directory()
    try:
        assert await directory.member_of(MAX) == MAX_GROUPS | {"school", "school-all@school.test",
                                                               "loop-b", "loop-b@school.test"}
        # through the loop, but a group is not listed as its own member
        assert await directory.member_of("loop-b@school.test") == {"school", "school-all@school.test"}
    finally:
        await directory.close()


# ---- authenticate -------------------------------------------------------------------------------------


async def test_authenticate_by_uid_and_by_mail(directory: Directory) -> None:
    by_uid = await directory.authenticate("anna.schmidt", "Anna2026!")
    assert by_uid == Account(uid="anna.schmidt", dn=f"uid=anna.schmidt,{PEOPLE}", mail=ANNA,
                             addresses=frozenset({ANNA, "sekretariat@school.test"}))
    by_mail = await directory.authenticate("Anna.Schmidt@school.test", "Anna2026!")
    assert by_mail == by_uid
    assert (await directory.authenticate("eltern.mueller", "Mueller2026!")).addresses == {
        "eltern.mueller@school.test"}


async def test_authenticate_refuses_wrong_or_empty_passwords(directory: Directory) -> None:
    assert await directory.authenticate("anna.schmidt", "anna2026!") is None
    assert await directory.authenticate("anna.schmidt", "Max2026!") is None
    assert await directory.authenticate(ANNA, "wrong") is None
    asked = directory.requests
    assert await directory.authenticate("anna.schmidt", "") is None
    assert await directory.authenticate("", "Anna2026!") is None
    assert directory.requests == asked  # refused without asking: no anonymous-bind trick


async def test_authenticate_refuses_disabled_unknown_and_odd_logins(directory: Directory) -> None:
    assert await directory.authenticate("old.student", "Old2026!") is None  # slapd would let it bind
    assert await directory.authenticate("old.student@school.test", "Old2026!") is None
    assert await directory.authenticate("nobody", "Anna2026!") is None
    assert await directory.authenticate("*", "Anna2026!") is None
    assert await directory.authenticate("anna.schmidt)(uid=*", "Anna2026!") is None
    assert await directory.authenticate("sekretariat@school.test", "Anna2026!") is None  # aliases are no logins
    asked = directory.requests
    assert await directory.authenticate("anna.schmidt\x00", "Anna2026!") is None
    assert await directory.authenticate("anna.schmidt ", "Anna2026!") is None
    assert directory.requests == asked


async def test_authenticate_is_never_cached(directory: Directory) -> None:
    assert await directory.authenticate("lena.mueller", "Lena2026!") is not None
    asked = directory.requests
    assert await directory.authenticate("lena.mueller", "Lena2026!") is not None
    assert directory.requests == asked + 2  # the search and the bind, again


# ---- failures -------------------------------------------------------------------------------------------


async def test_server_down_is_unavailable_not_unknown(own_slapd: SlapdServer) -> None:
    directory = own_slapd.directory(timeout=1.0)
    try:
        assert (await directory.lookup(MAX)) is not None
        own_slapd.stop()
        with pytest.raises(DirectoryUnavailable):
            await directory.lookup(LENA)
        with pytest.raises(DirectoryUnavailable):
            await directory.member_of(LENA)
        with pytest.raises(DirectoryUnavailable):
            await directory.authenticate("lena.mueller", "Lena2026!")
        # failures are not cached: once slapd is back, the same lookup answers
        own_slapd.restart()
        assert (await directory.lookup(LENA)).mail == LENA
    finally:
        await directory.close()


async def test_reconnects_after_a_restart_without_failing(own_slapd: SlapdServer) -> None:
    directory = own_slapd.directory(cache_ttl=0, threads=1)
    try:
        assert await directory.lookup(MAX) is not None
        own_slapd.restart()  # the pool thread's connection is now dead
        assert (await directory.lookup(MAX)).mail == MAX
    finally:
        await directory.close()


async def test_a_server_that_never_answers_times_out() -> None:
    with socket.socket() as silent:  # the kernel completes the handshake; nobody ever reads
        silent.bind((SLAPD_HOST, 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        directory = Directory(SLAPD_HOST, port, "dc=school,dc=test", timeout=0.5)
        try:
            started = time.monotonic()
            with pytest.raises(DirectoryUnavailable):
                await directory.lookup(MAX)
            with pytest.raises(DirectoryUnavailable):
                await directory.authenticate("max.mustermann", "Max2026!")
            assert time.monotonic() - started < 3.0
        finally:
            await directory.close()


async def test_bind_dn_with_password_file(slapd: SlapdServer, tmp_path) -> None:
    # the [ldap] keys bind_dn / password_file / cache_ttl (not in LdapSettings yet: a stand-in)
    secret = tmp_path / "ldap-password"
    section = SimpleNamespace(host=SLAPD_HOST, port=slapd.port, base="dc=school,dc=test", timeout=2.0,
                              bind_dn=ROOT_DN, password_file=str(secret), cache_ttl=5.0)
    secret.write_text("not the password\n")
    wrong = Directory.from_settings(section)
    try:
        with pytest.raises(DirectoryUnavailable):  # a refused service bind is no "not found"
            await wrong.lookup(MAX)
    finally:
        await wrong.close()
    secret.write_text(ROOT_PASSWORD + "\n")
    good = Directory.from_settings(section)
    try:
        assert (await good.lookup(MAX)).mail == MAX
    finally:
        await good.close()
    secret.unlink()
    with pytest.raises(ValueError, match="ldap.password_file"):
        Directory.from_settings(section)
    section.password_file = ""
    with pytest.raises(ValueError, match="ldap.bind_dn needs ldap.password_file"):
        Directory.from_settings(section)


# ---- attributes -----------------------------------------------------------------------------------------


async def test_attributes_of_the_entry_an_address_belongs_to(directory: Directory) -> None:
    names = ["poststelleSpamQuarantine", "poststelleSpamRejectAt", "preferredLanguage", "poststelleBlockSender",
             "poststelleSpamTagProbable"]
    found = await directory.attributes("Eltern.Mueller@school.test", names)
    assert found == {"poststelleSpamQuarantine": ("TRUE",), "poststelleSpamRejectAt": ("50",),
                     "preferredLanguage": ("en",), "poststelleBlockSender": ("newsletter@shop.example",),
                     "poststelleSpamTagProbable": ()}  # asked for, not set
    # names as a site writes them (LDAP attribute names are case-insensitive), through an alias
    assert await directory.attributes("sekretariat@school.test", ["CN", "mailLocalAddress"]) == {
        "CN": ("Anna Schmidt",), "mailLocalAddress": ("sekretariat@school.test",)}
    assert await directory.attributes("9a@school.test", ["cn"]) == {"cn": ("9a",)}
    assert await directory.attributes("nobody@school.test", names) is None
    assert await directory.attributes("*@school.test", names) is None  # a filter metacharacter matches nothing
    asked = directory.requests
    assert (await directory.attributes("eltern.mueller@school.test", list(reversed(names))))["preferredLanguage"] == ("en",)
    assert directory.requests == asked  # cached, whatever the order of the names


# ---- cache --------------------------------------------------------------------------------------------


async def test_answers_are_cached_for_the_ttl(slapd: SlapdServer) -> None:
    clock = FakeClock()
    directory = slapd.directory(cache_ttl=60, clock=clock)
    try:
        assert (await directory.lookup(MAX)).mail == MAX
        assert await directory.lookup("nobody@school.test") is None
        assert directory.requests == 2
        assert (await directory.lookup("MAX.Mustermann@school.test")).mail == MAX
        assert await directory.lookup("nobody@school.test") is None
        assert directory.requests == 2
        assert await directory.member_of(MAX) == MAX_GROUPS
        asked = directory.requests  # the groups of max, and the groups of those
        assert await directory.member_of(MAX) == MAX_GROUPS
        assert directory.requests == asked
        clock.now += 61
        assert (await directory.lookup(MAX)).mail == MAX
        assert directory.requests == asked + 1
    finally:
        await directory.close()


async def test_cache_answers_while_the_server_is_down_until_the_ttl_ends(own_slapd: SlapdServer) -> None:
    clock = FakeClock()
    directory = own_slapd.directory(timeout=1.0, cache_ttl=60, clock=clock)
    try:
        assert await directory.lookup(MAX) is not None
        assert await directory.lookup("nobody@school.test") is None
        own_slapd.stop()
        clock.now += 59
        assert (await directory.lookup(MAX)).mail == MAX
        assert await directory.lookup("nobody@school.test") is None
        clock.now += 2
        with pytest.raises(DirectoryUnavailable):
            await directory.lookup(MAX)
    finally:
        await directory.close()


async def test_ttl_zero_turns_the_cache_off(slapd: SlapdServer) -> None:
    uncached = slapd.directory(cache_ttl=0)
    try:
        for _ in range(3):
            assert await uncached.lookup(MAX) is not None
        assert uncached.requests == 3
    finally:
        await uncached.close()


def test_from_settings_reads_the_ldap_section() -> None:
    directory = Directory.from_settings(LdapSettings(host="192.0.2.1", port=1389, base="o=x", timeout=1.5))
    assert (directory.host, directory.port, directory.base, directory.timeout) == ("192.0.2.1", 1389, "o=x", 1.5)
    assert directory.bind_dn == ""
