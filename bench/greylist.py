"""Greylisting: decisions per second per core, and how much mail a simulated stream sees delayed.

No broker needed: the store runs on the in-memory log (`ingress.greylist_store.MemoryTransport`),
so the figures are the store's own cost (dict lookups, record encoding, the write queue), not
Kafka's.

    .venv/bin/python bench/greylist.py [--lookups 1000000] [--triplets 100000] [--clients 10000]
                                       [--days 7] [--seed 1]

1. Lookups: a store pre-filled with `--triplets` passed triplets and `--clients` auto-whitelisted
   client networks answers `--lookups` calls of `GreylistStore.decide` — a mix of 40 % known
   triplets, 30 % whitelisted clients, 20 % first attempts and 10 % early retries — timed with
   `time.process_time()` (one thread, so that is one core), the writer task draining the queued
   writes included. Target: at least 50,000 per second per core.
2. Stream: `--days` of simulated mail at the default settings (delay 5 min, window 24 h,
   auto-whitelist after 5): returning MTAs (3,000 with Zipf-distributed volumes, each with its own senders, retrying
   like Postfix: after 5-15 min, then doubling up to 4000 s) and one-shot spam senders (a new
   address per message; one in ten retries once after a minute, too early). Prints the share of
   mail delayed and the share of delayed mail that passed after its retry, as analytics would
   show them (`smtp_reject` "greylisted" vs. `smtp_check` "passed_after_retry").
"""
from __future__ import annotations

import argparse
import asyncio
import heapq
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingress.greylist_store import (  # noqa: E402
    CLIENTS,
    DELAYED,
    PASSED_AFTER_RETRY,
    TOO_EARLY,
    TRIPLETS,
    GreylistPolicy,
    GreylistStore,
    MemoryLog,
    MemoryTransport,
    Record,
    client_key,
    triplet_key,
)

T0 = 1_700_000_000.0
DAY = 86_400.0
CHUNK = 10_000  # decisions between yields, so the writer task drains the queue


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def started_store(clock: Clock) -> GreylistStore:
    store = GreylistStore(MemoryTransport(MemoryLog()), GreylistPolicy(), clock=clock, sweep_every=1e9)
    assert await store.start(5.0)
    return store


# ---- 1. lookups -----------------------------------------------------------------------------------


def net(i: int) -> str:
    return f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/32"


def prefill(store: GreylistStore, triplets: int, clients: int) -> None:
    passed = Record(T0 - DAY, T0 - 60, 1, T0 + 30 * DAY)
    for i in range(triplets):
        store.apply(TRIPLETS, triplet_key(net(i), f"s{i}@sender.example", f"r{i % 500}@school.test"), passed.encode())
    whitelisted = Record(T0 - 10 * DAY, T0 - 60, 5, T0 + 30 * DAY)
    for i in range(clients):
        store.apply(CLIENTS, client_key(net(1_000_000 + i)), whitelisted.encode())


def workload(lookups: int, triplets: int, clients: int, rng: random.Random) -> list[tuple[str, str, str]]:
    """(net, sender, recipient) for each lookup, in the mix the docstring describes."""
    calls = []
    for n in range(lookups):
        kind = rng.random()
        if kind < 0.4:
            i = rng.randrange(triplets)
            calls.append((net(i), f"s{i}@sender.example", f"r{i % 500}@school.test"))
        elif kind < 0.7:
            calls.append((net(1_000_000 + rng.randrange(clients)), "x@bulk.example", "r1@school.test"))
        elif kind < 0.9:
            calls.append((net(2_000_000 + n), f"spam{n}@random.example", "r2@school.test"))
        else:  # an early retry of a first attempt made just before
            calls.append(calls[-1] if calls else (net(3_000_000), "a@b.example", "r3@school.test"))
    return calls


async def bench_lookups(lookups: int, triplets: int, clients: int, seed: int) -> None:
    clock = Clock()
    store = await started_store(clock)
    prefill(store, triplets, clients)
    calls = workload(lookups, triplets, clients, random.Random(seed))
    decide = store.decide
    started = time.process_time()
    for offset in range(0, len(calls), CHUNK):
        for call in calls[offset:offset + CHUNK]:
            decide(*call)
        await asyncio.sleep(0)  # the writer hands the queued writes to the (memory) log
    await store._writes.join()
    cpu = time.process_time() - started
    written = sum(len(r) for r in store.transport.memory.records.values())
    print(f"lookups: {lookups:,} decisions on {triplets:,} triplets + {clients:,} whitelisted clients "
          f"in {cpu:.2f} s CPU: {lookups / cpu:,.0f} per second per core "
          f"({written:,} records written, {store.writes_dropped} dropped)")
    await store.close()


# ---- 2. a simulated stream ------------------------------------------------------------------------


@dataclass
class Tally:
    messages: int = 0
    accepted_first_try: int = 0
    delayed: int = 0  # got "greylisted" at their first attempt
    passed_after_retry: int = 0
    too_early: int = 0  # 451 answers to early retries
    never_accepted: int = 0
    extra_delay: list[float] = field(default_factory=list)


def postfix_retry_delays(rng: random.Random) -> list[float]:
    first = rng.uniform(300, 900)
    return [min(first * 2 ** k, 4000.0) for k in range(40)]


async def bench_stream(days: float, seed: int) -> None:
    rng = random.Random(seed)
    clock = Clock()
    store = await started_store(clock)
    # 3,000 MTAs whose volumes follow Zipf's law: a few big senders, a long tail of small ones
    mtas = [(f"198.18.{i >> 8}.{i & 255}/32", [f"u{j}@org{i}.example" for j in range(rng.randint(1, 30))])
            for i in range(3000)]
    weights = [1 / (rank + 1) for rank in range(len(mtas))]
    recipients = [f"user{i}@school.test" for i in range(2000)]
    events: list[tuple[float, int, str, tuple[str, str, str], list[float], float]] = []
    seq = 0

    def schedule(at: float, kind: str, triplet: tuple[str, str, str], delays: list[float], sent: float) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (at, seq, kind, triplet, delays, sent))

    end = T0 + days * DAY
    at = T0
    while at < end:  # legitimate mail: about 30,000 messages a day
        at += rng.expovariate(30_000 / DAY)
        ip, senders = rng.choices(mtas, weights)[0]
        schedule(at, "ham", (ip, rng.choice(senders), rng.choice(recipients)), postfix_retry_delays(rng), at)
    at = T0
    while at < end:  # spam from one-shot senders: about 20,000 a day
        at += rng.expovariate(20_000 / DAY)
        ip = f"203.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}/32"
        delays = [60.0] if rng.random() < 0.1 else []
        schedule(at, "spam", (ip, f"x{rng.randrange(10**9)}@spam.example", rng.choice(recipients)), delays, at)

    tallies = {"ham": Tally(), "spam": Tally()}
    next_sweep = T0 + 3600
    handled = 0
    while events:
        at, _, kind, triplet, delays, sent = heapq.heappop(events)
        clock.now = at
        tally = tallies[kind]
        first = at == sent
        verdict = store.decide(*triplet)
        if first:
            tally.messages += 1
        if verdict.outcome == DELAYED and first:
            tally.delayed += 1
        elif verdict.outcome == TOO_EARLY:
            tally.too_early += 1
        elif verdict.outcome == PASSED_AFTER_RETRY:
            tally.passed_after_retry += 1
        if not verdict.delayed:
            if first:
                tally.accepted_first_try += 1
            else:
                tally.extra_delay.append(at - sent)
        elif delays:
            schedule(at + delays[0], kind, triplet, delays[1:], sent)
        else:
            tally.never_accepted += 1
        if at >= next_sweep:
            store.sweep()
            next_sweep += 3600
        handled += 1
        if handled % CHUNK == 0:
            await asyncio.sleep(0)

    print(f"stream: {days:g} simulated days, default settings")
    for kind, t in tallies.items():
        delayed_share = 100 * t.delayed / max(t.messages, 1)
        passed_share = 100 * t.passed_after_retry / max(t.delayed, 1)
        line = (f"  {kind:4}: {t.messages:,} messages, {delayed_share:.1f} % delayed, "
                f"{passed_share:.1f} % of those passed after retry, {len(t.extra_delay):,} accepted after "
                f"waiting (passed, or auto-whitelisted meanwhile), {t.never_accepted:,} never accepted")
        if t.extra_delay:
            t.extra_delay.sort()
            line += (f"; delay of delayed mail: median {t.extra_delay[len(t.extra_delay) // 2] / 60:.0f} min, "
                     f"95th percentile {t.extra_delay[int(len(t.extra_delay) * 0.95)] / 60:.0f} min")
        print(line)
    total = sum(t.messages for t in tallies.values())
    delayed = sum(t.delayed for t in tallies.values())
    passed = sum(t.passed_after_retry for t in tallies.values())
    print(f"  all : {100 * delayed / total:.1f} % delayed, {100 * passed / max(delayed, 1):.1f} % passed after retry"
          f" ({len(store.triplets):,} triplets and {len(store.clients):,} client entries live at the end)")
    await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lookups", type=int, default=1_000_000)
    parser.add_argument("--triplets", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(bench_lookups(args.lookups, args.triplets, args.clients, args.seed))
    asyncio.run(bench_stream(args.days, args.seed))


if __name__ == "__main__":
    main()
