"""The site's own lists: entry validation, the replayed in-memory copy, and the CLI's validation."""
from __future__ import annotations

import asyncio

import pytest

from pipeline.cli import main
from pipeline.state.sitelists import ALLOW, BLOCK, LISTS, EntryError, SiteLists, parse_entry, remove_entry, write_entry
from pipeline.tables import MemoryLog, MemoryTransport

DIGEST = "ab" * 32


# ---- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, value, normalised", [
    ("domain", "Spam.TEST.", "spam.test"),
    ("domain", "bücher.test", "xn--bcher-kva.test"),
    ("address", "Max.Mustermann@Spam.Test", "max.mustermann@spam.test"),
    ("cidr", "192.0.2.0/24", "192.0.2.0/24"),
    ("cidr", "192.0.2.7", "192.0.2.7/32"),
    ("cidr", "2001:DB8::/32", "2001:db8::/32"),
    ("sha256", DIGEST.upper(), DIGEST),
])
def test_entries_are_normalised(kind: str, value: str, normalised: str) -> None:
    entry = parse_entry("block", kind, value, "why")
    assert (entry.value, entry.key, entry.comment) == (normalised, f"{kind}:{normalised}", "why")


@pytest.mark.parametrize("list_name, kind, value, message", [
    ("block", "cidr", "192.0.2.7/24", "has host bits set; did you mean 192.0.2.0/24?"),
    ("block", "cidr", "192.0.2.300", "is not an IPv4 or IPv6 address or network"),
    ("block", "sha256", "abc", "expected 64 hexadecimal digits, got 3 characters"),
    ("block", "sha256", "g" * 64, "got 64 characters with non-hex ones"),
    ("block", "address", "no-at-sign", "expected local-part@domain"),
    ("block", "address", "a b@x.test", "the local part holds ' '"),
    ("block", "address", "a@x..test", "bad domain: 'x..test' has an empty label"),
    ("block", "domain", "-x.test", "must be 1-63 letters"),
    ("block", "domain", "a" * 64 + ".test", "must be 1-63 letters"),
    ("block", "domain", "", "empty domain name"),
    ("deny", "domain", "x.test", "unknown list 'deny'"),
    ("block", "ip", "x.test", "unknown kind 'ip'"),
])
def test_invalid_entries_say_precisely_why(list_name: str, kind: str, value: str, message: str) -> None:
    with pytest.raises(EntryError) as error:
        parse_entry(list_name, kind, value)
    assert message in str(error.value)


def test_the_cli_refuses_an_invalid_entry_before_talking_to_kafka(capsys) -> None:
    # POSTSTELLE_KAFKA__BOOTSTRAP is irrelevant: validation comes first, exit 2
    assert main(["list", "add", "block", "cidr", "10.1.2.3/8", "--comment", "x"]) == 2
    assert "invalid cidr entry: '10.1.2.3/8' has host bits set; did you mean 10.0.0.0/8?" in capsys.readouterr().err
    assert main(["list", "remove", "allow", "sha256", "xyz"]) == 2
    assert "is not a SHA-256 digest" in capsys.readouterr().err


def test_the_cli_refuses_unknown_lists_and_kinds(capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["list", "add", "deny", "domain", "x.test"])
    assert exited.value.code == 2
    assert "invalid choice: 'deny'" in capsys.readouterr().err


# ---- the in-memory copy --------------------------------------------------------------------------


def lists_with(*entries: tuple[str, str, str]) -> SiteLists:
    lists = SiteLists(None)
    for list_name, kind, value in entries:
        lists.put(parse_entry(list_name, kind, value, "c"))
    return lists


def test_domain_entries_match_the_domain_and_names_under_it() -> None:
    lists = lists_with(("block", "domain", "spam.test"))
    assert lists.match_domain(BLOCK, "spam.test").entry.value == "spam.test"
    assert lists.match_domain(BLOCK, "www.mail.spam.test").subject == "www.mail.spam.test"
    assert lists.match_domain(BLOCK, "notspam.test") is None
    assert lists.match_domain(ALLOW, "spam.test") is None


def test_sender_matches_by_address_then_domain() -> None:
    lists = lists_with(("block", "address", "eve@good.test"), ("allow", "domain", "partner.test"))
    assert lists.match_sender(BLOCK, "eve@good.test").entry.kind == "address"
    assert lists.match_sender(BLOCK, "max@good.test") is None
    found = lists.match_sender(ALLOW, "anyone@mail.partner.test")
    assert (found.entry.value, found.subject) == ("partner.test", "anyone@mail.partner.test")


def test_cidr_entries_match_v4_v6_and_mapped_addresses() -> None:
    lists = lists_with(("block", "cidr", "192.0.2.0/24"), ("block", "cidr", "2001:db8::/32"))
    assert lists.match_ip(BLOCK, "192.0.2.200").entry.value == "192.0.2.0/24"
    assert lists.match_ip(BLOCK, "::ffff:192.0.2.1").subject == "192.0.2.1"
    assert lists.match_ip(BLOCK, "2001:db8:1::5").entry.value == "2001:db8::/32"
    assert lists.match_ip(BLOCK, "198.51.100.1") is None
    assert lists.match_ip(BLOCK, "not an ip") is None


async def test_replay_then_follow_then_tombstone() -> None:
    memory = MemoryLog(LISTS)
    writer = MemoryTransport(memory)
    await writer.open()
    await write_entry(writer, parse_entry("block", "domain", "old.test", "before start"))
    memory.records[BLOCK].append(("domain:Not-Normalised.test", b'{"comment": ""}'))  # ignored
    memory.records[BLOCK].append(("sha256:" + DIGEST, b"not json"))  # ignored

    lists = SiteLists(MemoryTransport(memory), retry_every=0.01)
    assert await lists.start(timeout=5)
    assert [e.value for e in lists.entries(BLOCK)] == ["old.test"]
    assert lists.entries(BLOCK)[0].comment == "before start"
    assert lists.ignored == 2

    await write_entry(writer, parse_entry("block", "cidr", "192.0.2.0/24"))
    await _until(lambda: lists.match_ip(BLOCK, "192.0.2.9") is not None)
    await remove_entry(writer, BLOCK, "domain", "old.test")
    await remove_entry(writer, BLOCK, "cidr", "192.0.2.0/24")
    await _until(lambda: not lists.entries(BLOCK))
    assert lists.match_ip(BLOCK, "192.0.2.9") is None
    await lists.close()


async def test_start_waits_for_a_log_that_comes_back() -> None:
    memory = MemoryLog(LISTS)
    memory.available = False
    lists = SiteLists(MemoryTransport(memory), retry_every=0.01)
    assert not await lists.start(timeout=0.1)
    assert not lists.ready
    memory.available = True
    await _until(lambda: lists.ready)
    await lists.close()


async def _until(predicate, timeout: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def test_the_longest_network_matches_and_removal_falls_back_to_the_shorter() -> None:
    lists = lists_with(("block", "cidr", "10.0.0.0/8"), ("block", "cidr", "10.1.0.0/16"), ("block", "cidr", "0.0.0.0/0"))
    assert lists.match_ip(BLOCK, "10.1.2.3").entry.value == "10.1.0.0/16"
    lists.apply(BLOCK, "cidr:10.1.0.0/16", None)
    assert lists.match_ip(BLOCK, "10.1.2.3").entry.value == "10.0.0.0/8"
    lists.apply(BLOCK, "cidr:10.0.0.0/8", None)
    assert lists.match_ip(BLOCK, "10.1.2.3").entry.value == "0.0.0.0/0"
    assert lists.match_ip(BLOCK, "2001:db8::1") is None  # an IPv4 network never holds an IPv6 address
    lists.apply(BLOCK, "cidr:0.0.0.0/0", None)
    assert lists.match_ip(BLOCK, "10.1.2.3") is None and lists.tables[BLOCK].networks == {}
