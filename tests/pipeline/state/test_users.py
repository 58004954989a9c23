"""Per-user settings: values and their validation, the precedence of the sources, the site's limits,
replaying and following the topic, and the CLI's validation (the directory itself: test_users_ldap.py)."""
from __future__ import annotations

import asyncio
import dataclasses
import socket

import pytest

from pipeline.cli import main
from pipeline.clients.directory import Directory, Entry
from pipeline.config import load_settings
from pipeline.settings import ConfigError, UserLdapAttributes, UserLimits, UsersSettings
from pipeline.state.users import (
    TABLE,
    Change,
    SettingError,
    UserPrefs,
    UserSettings,
    UserSettingsUnavailable,
    apply_changes,
    parse_change,
    write_settings,
)
from pipeline.tables import MemoryLog, MemoryTransport
from schemas.events import UserPrefValues, UserSettingsChanged, encode_event

SITE = UsersSettings()
ANNA = "anna.schmidt@school.test"


def change(address: str, by: str = "cli:test", **values) -> UserSettingsChanged:
    return UserSettingsChanged(address=address, settings=UserPrefValues(**values), changed=sorted(values), by=by)


def record(event: UserSettingsChanged) -> bytes:
    return encode_event(event)


# ---- values ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("quarantine=on", Change("quarantine", "set", True)),
    ("quarantine = No", Change("quarantine", "set", False)),
    ("tag_probable=40", Change("tag_probable", "set", 40.0)),
    ("reject_at=92.5", Change("reject_at", "set", 92.5)),
    ("digest=Weekly", Change("digest", "set", "weekly")),
    ("language=en", Change("language", "set", "en")),
    ("allow_senders=Max@Partner.Example, @Bücher.example", Change("allow_senders", "set",
                                                                  ("max@partner.example", "@xn--bcher-kva.example"))),
    ("allow_senders=", Change("allow_senders", "set", ())),
    ("block_senders+=a@x.example b@x.example a@x.example",
     Change("block_senders", "add", ("a@x.example", "b@x.example"))),
    ("block_senders-=@x.example", Change("block_senders", "remove", ("@x.example",))),
])
def test_changes_are_parsed_and_normalised(text: str, expected: Change) -> None:
    assert parse_change(text, SITE) == expected


@pytest.mark.parametrize("text, message", [
    ("quarantine", "expected key=value"),
    ("colour=red", "unknown setting 'colour'"),
    ("quarantine=maybe", "quarantine: expected on or off, got 'maybe'"),
    ("tag_probable=lots", "tag_probable: expected a spam probability in % (0 to 100), got 'lots'"),
    ("tag_certain=101", "expected a spam probability in % (0 to 100), got '101'"),
    ("tag_certain=nan", "got 'nan'"),
    ("reject_at=50", "reject_at: 50 is outside the site's limits 70 to 100 (users.limits.reject_at)"),
    ("quarantine_at=10", "quarantine_at: 10 is outside the site's limits 20 to 100"),
    ("digest=hourly", "digest: expected one of daily, weekly, off, got 'hourly'"),
    ("language=fr", "language: expected one of de, en, got 'fr'"),
    ("allow_senders=nobody", "allow_senders: 'nobody' is neither an address nor @domain"),
    ("allow_senders=@-bad.example", "'@-bad.example' is neither an address nor @domain"),
    ("quarantine+=on", "+= is for the lists (allow_senders, block_senders)"),
    ("block_senders+=", "block_senders+=: name at least one address or @domain"),
])
def test_invalid_changes_say_precisely_why(text: str, message: str) -> None:
    with pytest.raises(SettingError) as error:
        parse_change(text, SITE)
    assert message in str(error.value)


def test_a_list_longer_than_the_site_allows_is_refused() -> None:
    site = UsersSettings(max_list_entries=2)
    with pytest.raises(SettingError, match=r"3 entries, more than the site allows \(2, users.max_list_entries\)"):
        parse_change("allow_senders=a@x.example,b@x.example,c@x.example", site)
    grown = [parse_change("allow_senders+=c@x.example", site)]
    with pytest.raises(SettingError, match="3 entries"):
        apply_changes(UserPrefValues(), UserPrefs(allow_senders=("a@x.example", "b@x.example")), grown, site)


def test_adding_and_removing_start_from_the_effective_list() -> None:
    effective = UserPrefs(allow_senders=("a@x.example",), block_senders=("@spam.example",))  # e.g. the directory's
    own = UserPrefValues(tag_probable=40.0)
    changes = [parse_change(t, SITE) for t in ("allow_senders+=b@x.example,a@x.example", "block_senders-=@spam.example",
                                               "quarantine=on")]
    after = apply_changes(own, effective, changes, SITE)
    assert after == UserPrefValues(tag_probable=40.0, quarantine=True, allow_senders=["a@x.example", "b@x.example"],
                                   block_senders=[])
    after = apply_changes(after, effective, [Change("tag_probable", "reset"), Change("quarantine", "reset")], SITE)
    assert after == UserPrefValues(allow_senders=["a@x.example", "b@x.example"], block_senders=[])
    with pytest.raises(SettingError, match="allow_senders: not on the list: c@x.example"):
        apply_changes(after, effective, [parse_change("allow_senders-=c@x.example", SITE)], SITE)


def test_sender_lists_match_the_address_or_the_domain_and_names_under_it() -> None:
    prefs = UserPrefs(allow_senders=("friend@example.org", "@partner.example"), block_senders=("@spam.example",))
    assert prefs.allows("Friend@EXAMPLE.org") and prefs.allows("x@partner.example")
    assert prefs.allows("x@mx.partner.example")
    assert not prefs.allows("other@example.org") and not prefs.allows("x@notpartner.example")
    assert not prefs.allows("") and not prefs.allows("<>")  # the null sender is on no list
    assert prefs.blocks("a@news.spam.example") and not prefs.blocks("friend@example.org")


def test_the_users_section_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"users.limits.reject_at: expected \[min, max\] with 0 <= min <= max <= 100"):
        UserLimits(reject_at=[80.0, 60.0])
    with pytest.raises(ConfigError, match="users.limits.tag_probable"):
        UserLimits(tag_probable=[50.0])
    with pytest.raises(ConfigError, match="users.digest: expected one of daily, weekly, off"):
        UsersSettings(digest="monthly")
    with pytest.raises(ConfigError, match="users.language"):
        UsersSettings(language="fr")
    with pytest.raises(ConfigError, match="users.ldap.quarantine: expected an LDAP attribute name"):
        UserLdapAttributes(quarantine="spam quarantine")
    settings = load_settings(None, environ={"POSTSTELLE_USERS__LIMITS__REJECT_AT": "[60, 90]",
                                            "POSTSTELLE_USERS__LDAP__LANGUAGE": "preferredLanguage"})
    assert settings.users.limits.reject_at == [60.0, 90.0]
    assert settings.users.ldap.named() == {"language": "preferredLanguage"}


# ---- precedence: self-set > directory > site, within the limits -----------------------------------


class DirectoryOf:
    """The directory's answers for a few people (the real one on slapd: test_users_ldap.py)."""

    def __init__(self, people: dict[str, dict[str, tuple[str, ...]]], aliases: dict[str, str] | None = None) -> None:
        self.people, self.aliases = people, aliases or {}

    async def lookup(self, address: str) -> Entry | None:
        mail = self.aliases.get(address, address)
        return Entry("person", f"uid={mail}", mail) if mail in self.people else None

    async def attributes(self, address: str, names) -> dict[str, tuple[str, ...]] | None:
        found = self.people.get(self.aliases.get(address, address))
        return None if found is None else {name: found.get(name, ()) for name in names}

    async def close(self) -> None:
        pass


LDAP = UserLdapAttributes(quarantine="q", tag_probable="tp", reject_at="ra", allow_senders="allow", digest="dg",
                          language="preferredLanguage")


async def started(own: list[UserSettingsChanged], directory=None, site: UsersSettings | None = None) -> UserSettings:
    memory = MemoryLog([TABLE])
    memory.records[TABLE] = [(e.address, record(e)) for e in own]
    store = UserSettings(MemoryTransport(memory), site or dataclasses.replace(SITE, ldap=LDAP), directory)
    assert await store.start(timeout=2)
    return store


async def test_without_anything_set_the_site_applies() -> None:
    store = await started([], DirectoryOf({}))
    explained = await store.explain("Nobody@School.test")
    assert explained.prefs == UserPrefs(quarantine=False, digest="daily", language="de")
    assert (explained.address, explained.key, explained.in_directory, explained.last) == (
        "nobody@school.test", "nobody@school.test", False, None)
    assert {k: (s.origin, s.detail) for k, s in explained.sources.items() if k in ("quarantine", "tag_probable")} == {
        "quarantine": ("site", "users.quarantine"), "tag_probable": ("site", "the spam stage's ([stages.spam])")}
    await store.close()


async def test_self_set_wins_over_the_directory_which_wins_over_the_site() -> None:
    directory = DirectoryOf({ANNA: {"q": ("TRUE",), "tp": ("30",), "dg": ("Weekly",),
                                    "preferredLanguage": ("en-GB, de;q=0.5",),
                                    "allow": ("a@x.example, @y.example", "b@x.example")}})
    own = change(ANNA, by="portal:anna", tag_probable=45.0, digest="off")
    store = await started([own], directory, dataclasses.replace(SITE, ldap=LDAP, quarantine=False, language="de"))
    explained = await store.explain(ANNA)
    assert explained.prefs == UserPrefs(quarantine=True, tag_probable=45.0, digest="off", language="en",
                                        allow_senders=("a@x.example", "@y.example", "b@x.example"))
    sources = explained.sources
    assert (sources["tag_probable"].origin, sources["digest"].origin) == ("self", "self")
    assert sources["tag_probable"].detail == f"portal:anna at {own.time}"
    assert (sources["quarantine"].origin, sources["quarantine"].detail) == ("ldap", "q")
    assert (sources["language"].origin, sources["allow_senders"].origin) == ("ldap", "ldap")
    assert (sources["tag_certain"].origin, explained.prefs.tag_certain) == ("site", None)
    assert explained.last == own
    assert await store.prefs(ANNA) == explained.prefs


async def test_thresholds_are_kept_within_the_site_limits_from_any_source() -> None:
    directory = DirectoryOf({ANNA: {"ra": ("50",), "tp": ("5",)}})
    site = dataclasses.replace(SITE, ldap=LDAP, limits=UserLimits(tag_probable=[10.0, 90.0], reject_at=[70.0, 100.0],
                                                                  quarantine_at=[20.0, 60.0]))
    store = await started([change(ANNA, quarantine_at=80.0)], directory, site)
    explained = await store.explain(ANNA)
    assert (explained.prefs.reject_at, explained.sources["reject_at"].clamped_from) == (70.0, 50.0)
    assert (explained.prefs.tag_probable, explained.sources["tag_probable"].clamped_from) == (10.0, 5.0)
    assert (explained.prefs.quarantine_at, explained.sources["quarantine_at"].origin) == (60.0, "self")
    assert explained.sources["quarantine_at"].clamped_from == 80.0


async def test_values_that_are_not_valid_are_passed_over_for_the_next_source() -> None:
    directory = DirectoryOf({ANNA: {"q": ("maybe",), "preferredLanguage": ("fr",), "dg": ("weekly",),
                                    "allow": ("a@x.example", "nobody, @-bad.example")}})
    # a self-set value a newer release might write (a language this one does not know)
    store = await started([change(ANNA, language="it", digest="never")], directory)
    explained = await store.explain(ANNA)
    assert explained.prefs == UserPrefs(quarantine=False, digest="weekly", language="de",
                                        allow_senders=("a@x.example",))
    assert explained.sources["quarantine"].passed_over == ("q: quarantine: expected on or off, got 'maybe'",)
    assert explained.sources["language"].origin == "site"
    assert explained.sources["language"].passed_over == (
        "self-set: language: expected one of de, en, got 'it'",
        "preferredLanguage: language: expected one of de, en, got 'fr'")
    assert (explained.sources["digest"].origin, explained.sources["digest"].passed_over[0]) == (
        "ldap", "self-set: digest: expected one of daily, weekly, off, got 'never'")
    # one entry of a list that is not valid is left out, the rest of the list stays
    assert (explained.prefs.allow_senders, explained.sources["allow_senders"].origin) == (("a@x.example",), "ldap")
    assert [text.split(":")[0] for text in explained.sources["allow_senders"].passed_over] == ["allow", "allow"]
    assert "'nobody' is neither an address nor @domain" in explained.sources["allow_senders"].passed_over[0]


async def test_an_alias_has_the_settings_of_its_person() -> None:
    directory = DirectoryOf({ANNA: {"tp": ("30",)}}, aliases={"sekretariat@school.test": ANNA})
    store = await started([change(ANNA, quarantine=True)], directory)
    explained = await store.explain("Sekretariat@school.test")
    assert (explained.address, explained.key, explained.in_directory) == ("sekretariat@school.test", ANNA, True)
    assert (explained.prefs.quarantine, explained.prefs.tag_probable) == (True, 30.0)


async def test_without_a_directory_only_self_set_and_site_values_count() -> None:
    store = await started([change("sekretariat@school.test", quarantine=True)], None, SITE)
    explained = await store.explain("sekretariat@school.test")
    assert (explained.key, explained.in_directory) == ("sekretariat@school.test", None)
    assert explained.prefs.quarantine is True
    assert (await store.prefs(ANNA)).quarantine is False


# ---- the topic: replay, follow, and what cannot be known --------------------------------------------


async def test_replay_then_follow_then_tombstone_and_bad_records_are_ignored() -> None:
    memory = MemoryLog([TABLE])
    writer = MemoryTransport(memory)
    await write_settings(writer, change(ANNA, quarantine=True))
    await write_settings(writer, change(ANNA, quarantine=False, tag_probable=35.0))  # the last record counts
    not_about_the_key = record(change("lena.mueller@school.test", quarantine=True))
    memory.records[TABLE] += [("max.mustermann@school.test", b"not json"),
                              ("max.mustermann@school.test", not_about_the_key)]
    store = UserSettings(MemoryTransport(memory), SITE, retry_every=0.01)
    assert await store.start(timeout=2)
    assert await store.prefs(ANNA) == UserPrefs(quarantine=False, tag_probable=35.0)
    assert store.ignored == 2 and (await store.prefs("max.mustermann@school.test")) == UserPrefs()

    await write_settings(writer, change(ANNA, quarantine=True))  # another process changes it: followed
    await asyncio.wait_for(_until(lambda: store.own[ANNA].settings.quarantine), 2)
    assert await store.prefs(ANNA) == UserPrefs(quarantine=True)
    await writer.write(TABLE, ANNA, None)  # a tombstone: nothing of the user's own remains
    await asyncio.wait_for(_until(lambda: ANNA not in store.own), 2)
    assert await store.prefs(ANNA) == UserPrefs()
    await store.close()


async def _until(predicate) -> None:
    while not predicate():
        await asyncio.sleep(0.01)


async def test_prefs_are_unavailable_until_replayed_and_while_the_directory_is_down() -> None:
    memory = MemoryLog([TABLE])
    memory.available = False
    store = UserSettings(MemoryTransport(memory), SITE, retry_every=0.01)
    assert not await store.start(timeout=0.1)
    with pytest.raises(UserSettingsUnavailable, match="not replayed yet"):
        await store.prefs(ANNA)
    memory.available = True
    assert await store.start(timeout=2)
    assert await store.prefs(ANNA) == UserPrefs()
    await store.close()

    with socket.socket() as probe:  # a port where nothing listens: the directory does not answer
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down = Directory("127.0.0.1", port, "dc=school,dc=test", timeout=0.5)
    store = UserSettings(None, dataclasses.replace(SITE, ldap=LDAP), down)
    assert await store.start()
    with pytest.raises(UserSettingsUnavailable, match="the directory did not answer"):
        await store.prefs(ANNA)
    await store.close()


async def test_an_address_that_is_none_is_refused() -> None:
    store = await started([])
    with pytest.raises(SettingError, match="expected local-part@domain"):
        await store.prefs("postmaster")


# ---- the command line, before it talks to Kafka -------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["user", "set", ANNA, "reject_at=10"], "user set: reject_at: 10 is outside the site's limits 70 to 100"),
    (["user", "set", ANNA, "quarantine=on", "digest=hourly"], "digest: expected one of daily, weekly, off"),
    (["user", "set", "anna@other.example", "quarantine=on"], "other.example is not a local domain (school.test)"),
    (["user", "show", "anna"], "'anna' is not an address"),
    (["user", "reset", ANNA, "colour"], "poststelle user reset: unknown setting 'colour'"),
])
def test_the_cli_refuses_invalid_input_before_talking_to_kafka(argv: list[str], message: str, capsys) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err
