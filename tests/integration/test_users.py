"""Per-user settings in the real stack: `poststelle user` on the real Kafka and the stack's slapd, a
follower in another process that sees the change, and analytics keeping every change."""
from __future__ import annotations

import asyncio

import orjson

from pipeline.bus import Topics
from pipeline.cli.components import load_config
from pipeline.state.users import UserPrefs, UserSettings
from tests.integration.conftest import Stack, read_all

TOM = "tom.becker@school.test"
ANNA = "anna.schmidt@school.test"
PARENT = "eltern.mueller@school.test"  # has settings in the demo directory


def show(stack: Stack, address: str) -> dict:
    return orjson.loads(stack.cli("user", "show", address, "--json").stdout)


def test_show_tells_the_directory_values_apart_from_the_site_defaults(stack: Stack) -> None:
    shown = show(stack, PARENT)
    assert (shown["user"], shown["in_directory"], shown["last_change"]) == (PARENT, True, None)
    keys = ("quarantine", "quarantine_at", "reject_at", "language", "tag_probable")
    assert {k: shown["settings"][k] for k in keys} == {
        "quarantine": True, "quarantine_at": 60.0, "reject_at": 70.0, "language": "en", "tag_probable": None}
    assert shown["sources"]["reject_at"] == {"origin": "ldap", "detail": "poststelleSpamRejectAt", "clamped_from": 50.0,
                                             "passed_over": []}
    assert shown["sources"]["tag_probable"]["origin"] == "site"
    text = stack.cli("user", "show", PARENT).stdout
    assert "directory: poststelleSpamRejectAt (50 %, moved into the site's limits)" in text


def test_set_and_reset_reach_a_follower_in_another_process_and_analytics(stack: Stack) -> None:
    settings = load_config(environ=stack.env)

    async def scenario() -> None:
        follower = UserSettings.from_settings(settings, client_id="users-test")
        assert await follower.start(timeout=30)
        try:
            done = await asyncio.to_thread(stack.cli, "user", "set", TOM, "quarantine=on", "tag_probable=40",
                                           "allow_senders+=@Partner.example", "--by", "helpdesk:ticket-4711")
            assert "changed: quarantine, tag_probable, allow_senders" in done.stdout
            expected = UserPrefs(quarantine=True, tag_probable=40.0, allow_senders=("@partner.example",))
            await _until(follower, TOM, expected)

            await asyncio.to_thread(stack.cli, "user", "reset", TOM, "tag_probable")
            await _until(follower, TOM, UserPrefs(quarantine=True, allow_senders=("@partner.example",)))
            await asyncio.to_thread(stack.cli, "user", "reset", TOM)
            await _until(follower, TOM, UserPrefs())
        finally:
            await follower.close()

    try:
        asyncio.run(scenario())
    finally:
        stack.cli("user", "reset", TOM, check=False)
    changes = [e for e in read_all(stack, Topics.from_settings(settings).users) if e.address == TOM]
    assert [(e.changed, e.by) for e in changes[:2]] == [
        (["quarantine", "tag_probable", "allow_senders"], "helpdesk:ticket-4711"),
        (["tag_probable"], changes[1].by)]
    assert changes[1].by.startswith("cli:") and changes[2].settings.quarantine is None
    assert show(stack, TOM)["last_change"]["changed"][0] == "quarantine"  # the full reset, recorded
    # analytics keeps every change, which compaction of the topic would not
    # (the query of docs/operations.md)
    query = ("SELECT recipient AS user, reason AS changed, JSONExtractString(payload, 'by') AS by "
             f"FROM poststelle.events WHERE type = 'user_settings' AND recipient = '{TOM}' ORDER BY time")
    rows = stack.wait_for(lambda: len(found := stack.sql(query)) >= 3 and found, timeout=60,
                          what="the user_settings events in analytics")
    assert rows[0] == [TOM, "quarantine,tag_probable,allow_senders", "helpdesk:ticket-4711"]
    assert rows[2][1] == "quarantine,allow_senders"  # what was still set when all was reset


async def _until(follower: UserSettings, address: str, expected: UserPrefs, timeout: float = 15.0) -> None:
    async def match() -> None:
        while await follower.prefs(address) != expected:
            await asyncio.sleep(0.1)
    await asyncio.wait_for(match(), timeout)


def test_an_alias_changes_its_persons_settings(stack: Stack) -> None:
    try:
        done = stack.cli("user", "set", "sekretariat@school.test", "digest=off")
        assert "sekretariat@school.test: an alias of anna.schmidt@school.test, whose settings these are" in done.stdout
        shown = show(stack, ANNA)
        assert (shown["settings"]["digest"], shown["sources"]["digest"]["origin"]) == ("off", "self")
    finally:
        stack.cli("user", "reset", ANNA, check=False)


def test_refusals_say_why(stack: Stack) -> None:
    done = stack.cli("user", "set", "nobody@school.test", "quarantine=on", check=False)
    assert done.returncode == 2 and "no person or group in the directory has this address" in done.stderr
    done = stack.cli("user", "set", TOM, "reject_at=10", check=False)
    assert done.returncode == 2 and "reject_at: 10 is outside the site's limits 70 to 100" in done.stderr
    done = stack.cli("user", "set", TOM, "block_senders-=x@nowhere.example", check=False)
    assert done.returncode == 2 and "block_senders: not on the list: x@nowhere.example" in done.stderr
