"""pipeline.clients.groups against the real slapd with the demo school (deploy/local/directory.ldif)."""
from __future__ import annotations

import ldap3
import pytest

from pipeline.clients.directory import Directory, DirectoryUnavailable
from pipeline.clients.groups import Expansion, ExpansionTooLarge, GroupExpander
from tests.pipeline.clients.test_directory import ANNA, GROUPS, LENA, MAX, PEOPLE, TOM, admin
from tests.servers import SlapdServer

OLD = "old.student@school.test"
HAUSMEISTER = f"uid=hausmeister,{PEOPLE}"


def _expander(directory: Directory, **limits: int) -> GroupExpander:
    return GroupExpander(directory, ["school.test"], **limits)


async def test_people_aliases_and_unknown_addresses(directory: Directory) -> None:
    expander = _expander(directory)
    assert await expander.expand("Max.Mustermann@school.test") == Expansion(MAX, "mailbox", (MAX,))
    assert await expander.expand("Sekretariat@school.test") == Expansion("sekretariat@school.test", "alias", (ANNA,))
    assert await expander.expand(OLD) == Expansion(OLD, "disabled", (OLD,))
    assert await expander.expand("postmaster@school.test") == Expansion("postmaster@school.test", "unknown")


async def test_group_of_names_with_owner(directory: Directory) -> None:
    found = await _expander(directory).expand("9A@school.test")
    assert (found.kind, found.name, sorted(found.into), found.owner) == ("group", "9a", [LENA, MAX], ANNA)
    assert found.loops == found.duplicates == found.disabled == found.no_mailbox == found.unknown == ()


async def test_nested_groups(directory: Directory) -> None:
    found = await _expander(directory).expand("jahrgang9@school.test")
    assert sorted(found.into) == [LENA, MAX, TOM]
    assert found.nested == ("9a@school.test", "9b@school.test")
    assert found.loops == ()


async def test_a_group_containing_itself_is_cut_and_recorded(directory: Directory) -> None:
    found = await _expander(directory).expand("schach@school.test")
    assert sorted(found.into) == [LENA, TOM]  # each once
    assert found.nested == ("schach-team@school.test",)
    assert sorted(found.loops) == ["schach-team@school.test -> schach@school.test",
                                   "schach@school.test -> schach@school.test"]


async def test_unique_members_and_a_person_without_mailbox(directory: Directory) -> None:
    found = await _expander(directory).expand("verwaltung@school.test")
    assert (found.into, found.no_mailbox) == ((ANNA,), (HAUSMEISTER,))


async def test_posix_group_logins_and_a_disabled_member(directory: Directory) -> None:
    found = await _expander(directory).expand("informatik-ag@school.test")
    assert (sorted(found.into), found.disabled) == ([MAX, TOM], (OLD,))


async def test_plain_member_addresses_resolve_aliases(directory: Directory) -> None:
    found = await _expander(directory).expand("elternbeirat@school.test")
    assert found.into == ("eltern.mustermann@school.test", ANNA)  # Sekretariat@ is anna's alias


async def test_duplicates_unknown_members_and_outside_addresses(own_slapd: SlapdServer) -> None:
    conn = admin(own_slapd)
    assert conn.add(f"cn=mixed,{GROUPS}", ["nisMailAlias", "extensibleObject"], {
        "cn": "mixed", "mail": "mixed@school.test",
        "rfc822MailMember": [MAX, "9a@school.test", "vorsitz@elternbeirat.example", "nobody@school.test"]}), conn.result
    assert conn.add(f"cn=dangling,{GROUPS}", ["groupOfNames", "extensibleObject"], {
        "cn": "dangling", "mail": "dangling@school.test",
        "member": [f"uid=gone,{PEOPLE}", f"cn=mixed,{GROUPS}", f"cn=9a,{GROUPS}"]}), conn.result
    conn.unbind()
    directory = own_slapd.directory()
    try:
        found = await _expander(directory).expand("mixed@school.test")
        assert found.into == (MAX, "vorsitz@elternbeirat.example", LENA)  # max once, through 9a too
        assert found.duplicates == (MAX,)
        assert found.unknown == ("nobody@school.test",)
        found = await _expander(directory).expand("dangling@school.test")
        assert found.unknown == (f"uid=gone,{PEOPLE}", "nobody@school.test")
        assert "9a@school.test" in found.duplicates  # reached through mixed and directly: expanded once
        assert sorted(found.into) == sorted([MAX, "vorsitz@elternbeirat.example", LENA])
    finally:
        await directory.close()


async def test_over_the_size_limit_raises_never_truncates(directory: Directory) -> None:
    assert len((await _expander(directory, max_members=3).expand("jahrgang9@school.test")).into) == 3
    with pytest.raises(ExpansionTooLarge, match="group jahrgang9@school.test: more than max_members 2"):
        await _expander(directory, max_members=2).expand("jahrgang9@school.test")


async def test_too_deep_raises(directory: Directory) -> None:
    assert (await _expander(directory, max_depth=2).expand("jahrgang9@school.test")).kind == "group"
    with pytest.raises(ExpansionTooLarge, match=r"nested deeper than max_depth 1 \(level 2: 9a@school.test, 9b@"):
        await _expander(directory, max_depth=1).expand("jahrgang9@school.test")


async def test_a_long_chain_of_groups_stops_at_the_depth(own_slapd: SlapdServer) -> None:
    conn = admin(own_slapd)
    for level in range(12, 0, -1):  # chain1 > chain2 > ... > chain12 > max
        member = f"cn=chain{level + 1},{GROUPS}" if level < 12 else f"uid=max.mustermann,{PEOPLE}"
        assert conn.add(f"cn=chain{level},{GROUPS}", ["groupOfNames", "extensibleObject"],
                        {"cn": f"chain{level}", "mail": f"chain{level}@school.test", "member": member}), conn.result
    conn.unbind()
    directory = own_slapd.directory()
    try:
        assert (await _expander(directory, max_depth=12).expand("chain1@school.test")).into == (MAX,)
        with pytest.raises(ExpansionTooLarge, match="max_depth 8"):
            await _expander(directory).expand("chain1@school.test")
    finally:
        await directory.close()


async def test_the_directory_down_is_no_answer(own_slapd: SlapdServer) -> None:
    directory = own_slapd.directory(timeout=1.0)
    own_slapd.stop()
    try:
        with pytest.raises(DirectoryUnavailable):
            await _expander(directory).expand("9a@school.test")
    finally:
        await directory.close()


async def test_modifying_a_group_is_seen_after_the_cache(own_slapd: SlapdServer) -> None:
    directory = own_slapd.directory(cache_ttl=0)
    try:
        assert sorted((await _expander(directory).expand("9b@school.test")).into) == [TOM]
        conn = admin(own_slapd)
        assert conn.modify(f"cn=9b,{GROUPS}", {"member": [(ldap3.MODIFY_ADD, [f"uid=lena.mueller,{PEOPLE}"])]})
        conn.unbind()
        assert sorted((await _expander(directory).expand("9b@school.test")).into) == [LENA, TOM]
    finally:
        await directory.close()


async def test_members_are_read_in_batches_not_one_by_one(own_slapd: SlapdServer) -> None:
    conn = admin(own_slapd)
    people = [f"uid=kind{i},{PEOPLE}" for i in range(450)]
    for i, dn in enumerate(people):
        assert conn.add(dn, ["inetOrgPerson"], {"uid": f"kind{i}", "cn": "k", "sn": "k",
                                                "mail": f"kind{i}@school.test"}), conn.result
    odd = "UID=Max.Mustermann, ou=People,dc=school,dc=test"  # another spelling of max's DN
    assert conn.add(f"cn=gross,{GROUPS}", ["groupOfNames", "extensibleObject"],
                    {"cn": "gross", "mail": "gross@school.test", "member": [*people, odd]}), conn.result
    conn.unbind()
    directory = own_slapd.directory()
    try:
        found = await _expander(directory).expand("gross@school.test")
        assert len(found.into) == 451 and MAX in found.into
        assert directory.requests <= 6  # the lookup, then one search per 200 DNs (BATCH): not 451 reads
    finally:
        await directory.close()
