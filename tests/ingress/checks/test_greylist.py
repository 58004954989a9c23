"""Greylisting rules, with the store on an in-memory log (a transport swap) and an injected clock.

The Kafka side of the store (two instances, replay, tombstones on the compacted topics) is tested
against the real broker in tests/integration/test_greylist_kafka.py.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

import orjson
import pytest

from ingress.checks import CheckChain, CheckContext, CheckServices, Decision
from ingress.checks.greylist import GreylistCheck, GreylistSettings, read_whitelist_file
from ingress.greylist_store import (
    CLIENTS,
    TRIPLETS,
    GreylistStore,
    MemoryLog,
    MemoryTransport,
    Record,
    client_key,
    domain_key,
    mask_client,
    triplet_key,
)
from pipeline.config import load_settings
from pipeline.settings import ConfigError

pytestmark = pytest.mark.timeout(30)

T0 = 1_700_000_000.0
DAY = 86_400.0
IP = "192.0.2.10"
SENDER = "Alice@Example.ORG"
RCPT = "Max.Mustermann@school.test"
FIRST = "451 4.7.1 Greylisted, please try again in 300 seconds"


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def until(predicate, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


class Greylisting:
    """One greylist check on a started store; `clock`, `memory` and `store` are there to look at."""

    def __init__(self, settings: GreylistSettings, memory: MemoryLog, clock: Clock, sweep_every: float = 60.0) -> None:
        self.settings, self.memory, self.clock = settings, memory, clock
        self.store = GreylistStore(MemoryTransport(memory), settings.policy(), clock=clock, retry_every=0.01,
                                   sweep_every=sweep_every)
        self.check = GreylistCheck(settings, CheckServices(greylist=self.store))

    async def start(self, timeout: float = 2.0) -> bool:
        await self.check.start()
        return await self.store.start(timeout)

    async def close(self) -> None:
        await self.check.close()
        await self.store.close()

    async def rcpt(self, ip: str = IP, sender: str | None = SENDER, rcpt: str = RCPT,
                   **ctx_fields) -> tuple[Decision, str]:
        ctx = CheckContext(session_id="s1", client_ip=ip, sender=sender, **ctx_fields)
        decision = await self.check.rcpt(ctx, rcpt)
        return decision, ctx.notes.get("greylist", "")

    async def passed_retry(self, ip: str = IP, sender: str = SENDER, rcpt: str = RCPT) -> None:
        """Greylisted once, retried after the delay: passes."""
        assert (await self.rcpt(ip, sender, rcpt))[1] == "delayed"
        self.clock.advance(self.store.policy.delay)
        decision, note = await self.rcpt(ip, sender, rcpt)
        assert (decision.refused, note) == (False, "passed_after_retry")


@pytest.fixture
async def make():
    made: list[Greylisting] = []

    async def _make(memory: MemoryLog | None = None, clock: Clock | None = None, start: bool = True,
                    sweep_every: float = 60.0, **settings) -> Greylisting:
        g = Greylisting(GreylistSettings(**settings), memory or MemoryLog(), clock or Clock(), sweep_every)
        made.append(g)
        if start:
            assert await g.start()
        return g

    yield _make
    for g in made:
        await g.close()


# ---- the triplet ----------------------------------------------------------------------------------


async def test_first_attempt_is_delayed_with_a_retry_hint(make) -> None:
    g = await make()
    decision, note = await g.rcpt()
    assert decision.reply == FIRST
    assert decision.reason_code == "greylisted"
    assert note == "delayed"
    assert "192.0.2.10/32 <alice@example.org> -> <max.mustermann@school.test>" in decision.detail


async def test_retry_too_early_is_delayed_again_and_keeps_the_first_attempt(make) -> None:
    g = await make()
    await g.rcpt()
    g.clock.advance(100)
    decision, note = await g.rcpt()
    assert decision.reply == "451 4.7.1 Greylisted, please try again in 200 seconds"
    assert (decision.reason_code, note) == ("greylisted_too_early", "too_early")
    g.clock.advance(200)  # 300 s after the first attempt, 200 s after the second
    decision, note = await g.rcpt()
    assert (decision.refused, note) == (False, "passed_after_retry")


async def test_retry_after_the_delay_passes_and_the_triplet_stays_passed(make) -> None:
    g = await make()
    await g.passed_retry()
    g.clock.advance(3 * DAY)
    decision, note = await g.rcpt()
    assert (decision.refused, note) == (False, "passed")


async def test_sender_and_recipient_case_does_not_matter(make) -> None:
    g = await make()
    await g.rcpt(sender="alice@example.org", rcpt="max.mustermann@school.test")
    g.clock.advance(300)
    assert (await g.rcpt(sender="ALICE@EXAMPLE.ORG", rcpt="MAX.MUSTERMANN@SCHOOL.TEST"))[1] == "passed_after_retry"


async def test_each_part_of_the_triplet_counts(make) -> None:
    g = await make()
    await g.rcpt()
    g.clock.advance(300)
    assert (await g.rcpt(ip="192.0.2.11"))[1] == "delayed"
    assert (await g.rcpt(sender="bob@example.org"))[1] == "delayed"
    assert (await g.rcpt(rcpt="erika@school.test"))[1] == "delayed"
    assert (await g.rcpt())[1] == "passed_after_retry"


async def test_retry_after_the_window_starts_over(make) -> None:
    g = await make()
    await g.rcpt()
    g.clock.advance(DAY + 1)
    decision, note = await g.rcpt()
    assert (decision.reply, decision.reason_code, note) == (FIRST, "greylisted", "delayed")
    g.clock.advance(299)
    assert (await g.rcpt())[1] == "too_early"
    g.clock.advance(1)
    assert (await g.rcpt())[1] == "passed_after_retry"


async def test_null_sender_is_greylisted_too(make) -> None:
    g = await make()
    decision, note = await g.rcpt(sender="")
    assert (decision.reply, note) == (FIRST, "delayed")
    assert triplet_key("192.0.2.10/32", "", "max.mustermann@school.test") in g.store.triplets
    g.clock.advance(300)
    assert (await g.rcpt(sender=""))[1] == "passed_after_retry"


async def test_configured_delay_and_window(make) -> None:
    g = await make(delay="90s", retry_window="10m")
    decision, _ = await g.rcpt()
    assert decision.reply == "451 4.7.1 Greylisted, please try again in 90 seconds"
    g.clock.advance(90)
    assert (await g.rcpt())[1] == "passed_after_retry"
    await g.rcpt(sender="bob@example.org")
    g.clock.advance(601)
    assert (await g.rcpt(sender="bob@example.org"))[1] == "delayed"


# ---- networks -------------------------------------------------------------------------------------


async def test_netmask_v4_24_groups_two_addresses(make) -> None:
    g = await make(netmask_v4=24)
    await g.rcpt(ip="192.0.2.1")
    g.clock.advance(300)
    assert (await g.rcpt(ip="192.0.2.77"))[1] == "passed_after_retry"
    assert (await g.rcpt(ip="192.0.3.1"))[1] == "delayed"


async def test_default_netmask_v4_keeps_addresses_apart(make) -> None:
    g = await make()
    await g.rcpt(ip="192.0.2.1")
    g.clock.advance(300)
    assert (await g.rcpt(ip="192.0.2.77"))[1] == "delayed"


async def test_default_netmask_v6_is_64(make) -> None:
    g = await make()
    await g.rcpt(ip="2001:db8:1:2::1")
    g.clock.advance(300)
    assert (await g.rcpt(ip="2001:db8:1:2:ffff::9"))[1] == "passed_after_retry"
    assert (await g.rcpt(ip="2001:db8:1:3::1"))[1] == "delayed"


def test_mask_client() -> None:
    assert mask_client("192.0.2.77", 32, 64) == "192.0.2.77/32"
    assert mask_client("192.0.2.77", 24, 64) == "192.0.2.0/24"
    assert mask_client("2001:db8:1:2:3:4:5:6", 32, 64) == "2001:db8:1:2::/64"
    assert mask_client("::ffff:192.0.2.77", 24, 64) == "192.0.2.0/24"  # IPv4-mapped is IPv4
    with pytest.raises(ValueError):
        mask_client("not-an-ip", 32, 64)


# ---- auto-whitelisting ----------------------------------------------------------------------------


async def test_client_is_auto_whitelisted_after_n_passed_retries(make) -> None:
    g = await make(auto_whitelist_after=3, auto_whitelist_domain_after=0)
    for i in range(3):
        await g.passed_retry(sender=f"user{i}@domain{i}.example", rcpt=f"r{i}@school.test")
    assert g.store.clients[client_key("192.0.2.10/32")].passes == 3
    decision, note = await g.rcpt(sender="new@other.example", rcpt="new@school.test")
    assert (decision.refused, note) == (False, "auto_whitelisted")
    assert (await g.rcpt(ip="192.0.2.11", sender="new@other.example"))[1] == "delayed"  # another client


async def test_n_minus_one_passed_retries_are_not_enough(make) -> None:
    g = await make(auto_whitelist_after=3, auto_whitelist_domain_after=0)
    for i in range(2):
        await g.passed_retry(sender=f"user{i}@example.org")
    assert (await g.rcpt(sender="new@example.org"))[1] == "delayed"


async def test_sender_domain_and_client_are_auto_whitelisted_separately(make) -> None:
    g = await make(auto_whitelist_after=10, auto_whitelist_domain_after=2)
    await g.passed_retry(sender="a@lists.example")
    await g.passed_retry(sender="b@lists.example")
    assert g.store.clients[domain_key("lists.example", "192.0.2.10/32")].passes == 2
    assert (await g.rcpt(sender="c@lists.example"))[1] == "auto_whitelisted"
    assert (await g.rcpt(sender="c@other.example"))[1] == "delayed"  # the client itself is not yet
    assert (await g.rcpt(ip="192.0.2.99", sender="c@lists.example"))[1] == "delayed"  # nor the domain elsewhere


async def test_auto_whitelist_lasts_the_lifetime_refreshed_by_use(make) -> None:
    g = await make(auto_whitelist_after=1, auto_whitelist_domain_after=0, whitelist_lifetime="10d")
    await g.passed_retry()
    g.clock.advance(9 * DAY)
    assert (await g.rcpt(sender="x@example.net"))[1] == "auto_whitelisted"  # refreshes
    g.clock.advance(9 * DAY)  # 18 days after the pass, 9 after the last use
    assert (await g.rcpt(sender="y@example.net"))[1] == "auto_whitelisted"
    g.clock.advance(10 * DAY + 1)  # unused for longer than the lifetime
    assert (await g.rcpt(sender="z@example.net"))[1] == "delayed"


async def test_passed_triplet_expires_after_the_lifetime_without_use(make) -> None:
    g = await make(auto_whitelist_after=0, auto_whitelist_domain_after=0, whitelist_lifetime="10d")
    await g.passed_retry()
    g.clock.advance(9 * DAY)
    assert (await g.rcpt())[1] == "passed"  # refreshes
    g.clock.advance(9 * DAY)
    assert (await g.rcpt())[1] == "passed"
    g.clock.advance(10 * DAY + 1)
    assert (await g.rcpt())[1] == "delayed"


async def test_a_use_within_the_refresh_interval_does_not_rewrite(make) -> None:
    g = await make(auto_whitelist_after=0, auto_whitelist_domain_after=0)
    await g.passed_retry()
    await until(lambda: len(g.memory.records[TRIPLETS]) == 2)
    g.clock.advance(60)
    assert (await g.rcpt())[1] == "passed"
    g.clock.advance(2 * 3600)
    assert (await g.rcpt())[1] == "passed"
    await until(lambda: len(g.memory.records[TRIPLETS]) == 3)
    await asyncio.sleep(0.05)
    assert len(g.memory.records[TRIPLETS]) == 3


# ---- static whitelist and exemptions --------------------------------------------------------------


async def test_inline_whitelist(make) -> None:
    g = await make(whitelist=["198.51.100.0/24", "2001:db8:feed::/48"])
    assert await g.rcpt(ip="198.51.100.200") == (Decision(), "whitelisted")
    assert await g.rcpt(ip="2001:db8:feed:1::5") == (Decision(), "whitelisted")
    assert (await g.rcpt(ip="198.51.101.1"))[1] == "delayed"
    assert not any(k.startswith("198.51.100.") for k in g.store.triplets)


async def test_whitelist_file_with_comments(make, tmp_path: Path) -> None:
    path = tmp_path / "whitelist.txt"
    path.write_text("# providers\n203.0.113.0/25   # an outbound pool\n\n  2001:db8:abc::/48\n")
    g = await make(whitelist_file=str(path))
    assert (await g.rcpt(ip="203.0.113.5"))[1] == "whitelisted"
    assert (await g.rcpt(ip="2001:db8:abc::1"))[1] == "whitelisted"
    assert (await g.rcpt(ip="203.0.113.200"))[1] == "delayed"


def test_whitelist_file_errors_name_the_key_and_line(tmp_path: Path) -> None:
    path = tmp_path / "whitelist.txt"
    path.write_text("192.0.2.0/24\nmail.example.org\n")
    with pytest.raises(ConfigError, match=r"checks\.greylist\.whitelist_file: .*whitelist.txt:2"):
        read_whitelist_file(str(path))
    with pytest.raises(ConfigError, match=r"checks\.greylist\.whitelist_file: cannot read"):
        read_whitelist_file(str(tmp_path / "missing.txt"))


def test_shipped_example_whitelist_parses() -> None:
    cidrs = read_whitelist_file("deploy/local/greylist-whitelist.txt")  # relative to the source tree
    assert "74.125.0.0/16" in cidrs and len(cidrs) > 10


@pytest.mark.parametrize("fields, note", [
    ({"authenticated_as": "max.mustermann"}, "authenticated"),  # the session's standing ...
    ({"allowlisted": True}, "allowlisted"),
    ({"listener": "submission"}, "not_mx"),
    ({"trusted": True}, "skipped"),  # ... or a relay network
])
async def test_exempt_sessions_are_skipped(make, fields, note) -> None:
    g = await make()
    assert await g.rcpt(**fields) == (Decision(), note)
    assert g.store.triplets == {}


# ---- the store being unavailable ------------------------------------------------------------------


async def test_store_not_replayed_answers_451(make) -> None:
    memory = MemoryLog()
    memory.available = False
    g = await make(memory=memory, start=False)
    assert not await g.start(timeout=0.05)
    decision, note = await g.rcpt()
    assert decision.reply == "451 4.7.1 Greylisting state unavailable, please try again later"
    assert (decision.reason_code, note) == ("greylist_unavailable", "unavailable")
    memory.available = True  # the broker is back: the store catches up and greylisting works
    await until(lambda: g.store.ready)
    assert (await g.rcpt())[1] == "delayed"


async def test_store_not_replayed_passes_when_configured(make) -> None:
    memory = MemoryLog()
    memory.available = False
    g = await make(memory=memory, start=False, on_unavailable="pass")
    assert not await g.start(timeout=0.05)
    assert await g.rcpt() == (Decision(), "unavailable")


async def test_log_down_after_replay_keeps_deciding_locally(make, caplog) -> None:
    caplog.set_level(logging.INFO, logger="ingress.greylist_store")
    g = await make()
    await g.rcpt()
    await until(lambda: len(g.memory.records[TRIPLETS]) == 1)
    g.memory.available = False
    g.clock.advance(300)
    assert (await g.rcpt())[1] == "passed_after_retry"  # writes the triplet and two client counters
    await until(lambda: g.store.writes_failed == 3)
    assert len(g.memory.records[TRIPLETS]) == 1  # the writes were lost ...
    assert g.store.triplets[triplet_key("192.0.2.10/32", "alice@example.org", "max.mustermann@school.test")].passes == 1
    assert (await g.rcpt())[1] == "passed"  # ... the local state kept
    assert len([r for r in caplog.records if "cannot write" in r.getMessage()]) == 1  # one warning, not three
    g.memory.available = True
    assert (await g.rcpt(sender="bob@example.org"))[1] == "delayed"
    await until(lambda: len(g.memory.records[TRIPLETS]) == 2)
    assert any("writing to the log again (3 writes lost" in r.getMessage() for r in caplog.records)


# ---- sharing through the log ----------------------------------------------------------------------


async def test_a_triplet_seen_by_one_instance_passes_at_another(make) -> None:
    memory, clock = MemoryLog(), Clock()
    a = await make(memory=memory, clock=clock)
    b = await make(memory=memory, clock=clock)
    await a.rcpt()
    await until(lambda: len(b.store.triplets) == 1)
    clock.advance(300)
    assert (await b.rcpt())[1] == "passed_after_retry"
    await until(lambda: len(a.store.clients) == 2)
    assert (await a.rcpt())[1] == "passed"


async def test_a_restarted_store_replays_the_log(make) -> None:
    memory, clock = MemoryLog(), Clock()
    first = await make(memory=memory, clock=clock, auto_whitelist_after=1, auto_whitelist_domain_after=0)
    await first.passed_retry()
    await first.rcpt(sender="pending@example.net")
    await first.close()
    second = await make(memory=memory, clock=clock, auto_whitelist_after=1, auto_whitelist_domain_after=0)
    assert second.store.triplets == first.store.triplets
    assert second.store.clients == first.store.clients
    assert (await second.rcpt(sender="new@example.net"))[1] == "auto_whitelisted"


def test_records_are_small_json() -> None:
    record = Record(first_seen=T0, last_seen=T0 + 300, passes=1, expires=T0 + 35 * DAY)
    assert orjson.loads(record.encode()) == {"first_seen": T0, "last_seen": T0 + 300, "passes": 1,
                                             "expires": T0 + 35 * DAY}
    assert Record.decode(record.encode()) == record
    with pytest.raises(ValueError):
        Record.decode(b'{"first_seen": 1}')


async def test_sweep_removes_expired_entries_and_writes_tombstones(make) -> None:
    memory, clock = MemoryLog(), Clock()
    a = await make(memory=memory, clock=clock)
    b = await make(memory=memory, clock=clock)
    await a.rcpt()
    key = triplet_key("192.0.2.10/32", "alice@example.org", "max.mustermann@school.test")
    await until(lambda: key in b.store.triplets)
    clock.advance(DAY + 1)
    assert a.store.sweep() == 1
    assert key not in a.store.triplets
    await until(lambda: key not in b.store.triplets)  # b applied the tombstone
    assert memory.latest(TRIPLETS, key) is None


async def test_a_later_write_wins_and_a_tombstone_spares_a_live_entry() -> None:
    store = GreylistStore(None, clock=Clock())
    newer = Record(T0, T0 + 400, 1, T0 + 35 * DAY)
    older = Record(T0, T0, 0, T0 + DAY)
    store.apply(TRIPLETS, "k", newer.encode())
    store.apply(TRIPLETS, "k", older.encode())  # an echo of an older write
    assert store.triplets["k"] == newer
    store.apply(TRIPLETS, "k", None)  # another instance's sweep that had not seen the refresh
    assert store.triplets["k"] == newer
    store.apply(CLIENTS, "ip:x", b"not json")  # ignored
    assert store.clients == {}


async def test_periodic_sweep(make) -> None:
    g = await make(sweep_every=0.01)
    await g.rcpt()
    key = triplet_key("192.0.2.10/32", "alice@example.org", "max.mustermann@school.test")
    g.clock.advance(DAY + 1)
    await until(lambda: not g.store.triplets)
    await until(lambda: g.memory.records[TRIPLETS][-1] == (key, None))


# ---- settings -------------------------------------------------------------------------------------


def test_settings_from_toml_and_environment(tmp_path: Path) -> None:
    config = tmp_path / "poststelle.toml"
    config.write_text('[checks.greylist]\ndelay = "2m"\nnetmask_v4 = 24\nwhitelist = ["192.0.2.0/24"]\n')
    settings = load_settings(config, environ={"POSTSTELLE_CHECKS__GREYLIST__DELAY": "1s",
                                              "POSTSTELLE_CHECKS__GREYLIST__ON_UNAVAILABLE": "pass"})
    greylist = settings.checks["greylist"]
    assert (greylist.delay, greylist.netmask_v4, greylist.on_unavailable) == ("1s", 24, "pass")
    assert greylist.policy().delay == 1.0
    assert greylist.policy().whitelist_lifetime == 35 * DAY


@pytest.mark.parametrize(("fields", "message"), [
    ({"delay": "5 minutes"}, r"checks\.greylist\.delay: expected a duration"),
    ({"delay": "2h", "retry_window": "1h"}, r"checks\.greylist\.retry_window: must be longer"),
    ({"netmask_v4": 33}, r"checks\.greylist\.netmask_v4"),
    ({"netmask_v6": -1}, r"checks\.greylist\.netmask_v6"),
    ({"auto_whitelist_after": -1}, r"checks\.greylist\.auto_whitelist_after"),
    ({"on_unavailable": "ignore"}, r"checks\.greylist\.on_unavailable"),
    ({"whitelist": ["192.0.2.0/24", "example.org"]}, r"checks\.greylist\.whitelist\[1\]"),
])
def test_bad_settings_name_the_key(fields, message) -> None:
    with pytest.raises(ConfigError, match=message):
        GreylistSettings(**fields)


# ---- in the chain ---------------------------------------------------------------------------------


async def test_through_the_check_chain() -> None:
    clock = Clock()
    store = GreylistStore(MemoryTransport(MemoryLog()), GreylistSettings().policy(), clock=clock)
    assert await store.start(1.0)
    try:
        chain = CheckChain.build(["greylist"], {"greylist": GreylistSettings()},
                                 CheckServices(greylist=store), timeout=1.0)
        await chain.start()
        ctx = CheckContext(session_id="s", client_ip=IP, sender=SENDER)
        outcome = await chain.run("rcpt", ctx, RCPT)
        assert (outcome.check, outcome.decision.reply) == ("greylist", FIRST)
        clock.advance(300)
        outcome = await chain.run("rcpt", ctx, RCPT)
        assert not outcome.refused and ctx.notes["greylist"] == "passed_after_retry"
        await chain.close()
    finally:
        await store.close()


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        GreylistSettings().delay = "1s"  # type: ignore[misc]
