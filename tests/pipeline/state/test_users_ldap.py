"""Per-user settings from the real directory: the demo school's attributes on the test slapd, with the
local stack's [users] section (deploy/local/poststelle.toml, deploy/local/poststelle.schema)."""
from __future__ import annotations

import pytest

from pipeline.cli.components import load_config
from pipeline.clients.directory import Directory
from pipeline.settings import REPO_ROOT
from pipeline.state.users import TABLE, UserPrefs, UserSettings
from pipeline.tables import MemoryLog, MemoryTransport
from schemas.events import UserPrefValues, UserSettingsChanged, encode_event
from tests.servers import SlapdServer

PARENT = "eltern.mueller@school.test"  # the demo person with settings in the directory
ANNA = "anna.schmidt@school.test"


@pytest.fixture
async def store(slapd: SlapdServer):
    settings = load_config(REPO_ROOT / "deploy/local/poststelle.toml",
                           environ={"POSTSTELLE_LDAP__PORT": str(slapd.port)})
    memory = MemoryLog([TABLE])
    own = UserSettingsChanged(address=ANNA, settings=UserPrefValues(quarantine=True, tag_certain=65.0), by="cli:test")
    memory.records[TABLE].append((ANNA, encode_event(own)))
    # the topic in memory, the directory real
    found = UserSettings(MemoryTransport(memory), settings.users, Directory.from_settings(settings.ldap))
    assert await found.start(timeout=2)
    yield found
    await found.close()


async def test_the_directory_attributes_of_the_demo_school_apply(store: UserSettings) -> None:
    explained = await store.explain(PARENT)
    assert explained.prefs == UserPrefs(quarantine=True, quarantine_at=60.0, reject_at=70.0, digest="weekly",
                                        language="en", allow_senders=("@elternbeirat.example",),
                                        block_senders=("newsletter@shop.example",))
    sources = explained.sources
    assert {k: s.detail for k, s in sources.items() if s.origin == "ldap"} == {
        "quarantine": "poststelleSpamQuarantine", "quarantine_at": "poststelleSpamQuarantineAt",
        "reject_at": "poststelleSpamRejectAt", "digest": "poststelleQuarantineDigest",
        "language": "preferredLanguage", "allow_senders": "poststelleAllowSender",
        "block_senders": "poststelleBlockSender"}
    assert sources["reject_at"].clamped_from == 50.0  # below the demo site's minimum of 70
    assert explained.in_directory is True and explained.prefs.blocks("newsletter@shop.example")


async def test_an_alias_gets_its_persons_own_settings_and_others_the_site_defaults(store: UserSettings) -> None:
    explained = await store.explain("sekretariat@school.test")
    assert (explained.key, explained.prefs.quarantine, explained.prefs.tag_certain) == (ANNA, True, 65.0)
    assert explained.sources["quarantine"].origin == "self"
    assert await store.prefs("max.mustermann@school.test") == UserPrefs(quarantine=False, digest="daily", language="de")
    assert (await store.explain("nobody@school.test")).in_directory is False


def test_the_directory_is_read_only_when_the_site_names_attributes() -> None:
    local = load_config(REPO_ROOT / "deploy/local/poststelle.toml", environ={})
    with_attributes = UserSettings.from_settings(local)
    assert with_attributes.directory is not None and with_attributes.directory.port == local.ldap.port
    assert with_attributes.attributes["language"] == "preferredLanguage"
    assert UserSettings.from_settings(load_config(None, environ={})).directory is None  # the default: none named
