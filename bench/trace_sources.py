"""Where `poststelle trace` reads its events: the analytics store, or the topics themselves?

    .venv/bin/python bench/trace_sources.py [--messages 20000] [--traces 20] [--days 7]
                                            [--bootstrap 127.0.0.1:29500]

Each message is the trail of the timeline tests' scenario (tests/pipeline/state/timeline_scenario.py:
greylisted, accepted, stage results, quarantined, digest, released, delivered; 18 events) under fresh
ids, sessions, sender and Message-ID, spread over `--days`. `--pad` bytes are added to each stage's
details, so that a message's events weigh what the real stack's do (about 30 KB per message, 19
events averaging 1.6 KB, measured on the test stack: stage results 3.0 KB, routed 4.4 KB).

1. **Analytics store.** A fresh embedded chDB store (var/bench/trace/clickhouse, a database of its own)
   gets every message's events, inserted as the sink inserts them. Then, for `--traces` random
   messages: `AnalyticsSource.find` by Message-ID header, `find` by recipient and the ten minutes around
   the message, and `pool` + `build_timeline` by message id, each timed (the store queried in this
   process; through the sink's endpoint add about a millisecond of loopback HTTP per query).
2. **The topics** (with `--bootstrap`, a running broker such as a test stack's): the same events
   written to scratch topics (prefix ``bench.trace-<random>``, deleted afterwards), then
   `LogSource.read` (every event topic from the beginning, as `poststelle trace --from-log` does)
   and one `build_timeline`, timed.

Prints the figures as one JSON object; docs/decisions/0004-trace.md quotes them.
"""
from __future__ import annotations

import argparse
import asyncio
import random
import re
import shutil
import statistics
import sys
import time
import uuid
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consumers.sinks.analytics.store import AnalyticsStore  # noqa: E402
from pipeline.bus import Topics, ensure_topics, make_producer  # noqa: E402
from pipeline.settings import AnalyticsSinkSettings, KafkaSettings, PathSettings, Settings, SinkSettings  # noqa: E402
from pipeline.settings import TopologySettings  # noqa: E402
from pipeline.state.quarantine import entry_id  # noqa: E402
from pipeline.state.timeline import build_timeline  # noqa: E402
from pipeline.state.timeline_source import AnalyticsSource, LogSource, TraceRequest  # noqa: E402
from schemas.events import Event, decode_event, encode_event, epoch_from_iso, iso_from_epoch  # noqa: E402
from schemas.ids import new_id  # noqa: E402
from tests.pipeline.state.timeline_scenario import HEADER, LENA, MID, SENDER, scenario  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
STAGES = ["blocklist", "virus", "spam", "route"]


def _pad(d: dict, pad: int) -> dict:
    """Stage details as large as the real stack's (its stage results carry rule lists, DNS answers, ...)."""
    results = [d["result"]] if d["type"] == "stage_result" else d.get("results", [])[:1]
    for result in results:
        result["details"]["bench_padding"] = "x" * pad
    return d


def template(pad: int) -> tuple[list[dict], str, str]:
    """The scenario's own events (no noise) as JSON dicts, its entry id and the held event's id."""
    s = scenario()
    events = [e for e in s.events if e.id not in s.noise and e.type != "outcome"  # type: ignore[attr-defined]
              and (e.message_id in (MID, "digest-1") or not e.message_id)]
    held = next(e for e in events if e.type == "quarantined")
    return [_pad(orjson.loads(encode_event(e)), pad) for e in events], s.entry, held.id


def _rewrite(value, strings: dict[str, str], shift: float):
    if isinstance(value, dict):
        return {k: _rewrite(v, strings, shift) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite(v, strings, shift) for v in value]
    if isinstance(value, str):
        if value in strings:
            return strings[value]
        if ISO.match(value):
            return iso_from_epoch(epoch_from_iso(value) + shift)
    return value


def message_events(i: int, base: tuple[list[dict], str, str], shift: float) -> tuple[list[Event], str, str]:
    """Message number `i`'s trail: fresh event ids, message id, sessions, sender, header, entry."""
    events, old_entry, old_held = base
    ids = {d["id"]: new_id() for d in events}
    mid = str(uuid.uuid4())
    strings = {**ids, MID: mid, "s1": f"s1-{i}", "s2": f"s2-{i}", HEADER: f"<prize-{i}@ext.test>",
               SENDER: f"winner{i}@ext.test", old_entry: entry_id(ids[old_held], LENA), "digest-1": f"digest-{i}"}
    return [decode_event(orjson.dumps(_rewrite(d, strings, shift))) for d in events], mid, strings[HEADER]


def _ms(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {"median_ms": round(statistics.median(ordered) * 1000, 1),
            "max_ms": round(ordered[-1] * 1000, 1)}


def bench_store(all_events: list[Event], picks: list[tuple[str, str, float]]) -> dict:
    home = ROOT / "var/bench/trace"
    shutil.rmtree(home, ignore_errors=True)
    settings = Settings(paths=PathSettings(home=str(home)), topology=TopologySettings(stages=STAGES),
                        sinks=SinkSettings(analytics=AnalyticsSinkSettings(database="trace_bench")))
    store = AnalyticsStore.open(settings)
    try:
        started = time.perf_counter()
        for start in range(0, len(all_events), 10_000):
            store.insert(all_events[start:start + 10_000])
        inserted = time.perf_counter() - started
        source = AnalyticsSource(store.query, "trace_bench")
        by_header, by_recipient, timeline = [], [], []
        for mid, header, at in picks:
            t0 = time.perf_counter()
            assert source.find(TraceRequest(header=header)) == [mid]
            t1 = time.perf_counter()
            found = source.find(TraceRequest(recipient=LENA, since=at - 300, until=at + 300))
            t2 = time.perf_counter()
            steps = build_timeline(mid, source.pool(mid)).steps
            t3 = time.perf_counter()
            assert mid in found and len(steps) == 15, (len(steps), mid)
            by_header.append(t1 - t0)
            by_recipient.append(t2 - t1)
            timeline.append(t3 - t2)
        return {"events": len(all_events), "insert_s": round(inserted, 1), "find_by_header": _ms(by_header),
                "find_by_recipient_10min": _ms(by_recipient), "pool_and_timeline": _ms(timeline)}
    finally:
        store.close()


async def bench_log(all_events: list[Event], mid: str, bootstrap: str) -> dict:
    kafka = KafkaSettings(bootstrap=bootstrap, topic_prefix=f"bench.trace-{uuid.uuid4().hex[:8]}")
    settings = Settings(kafka=kafka, topology=TopologySettings(stages=STAGES))
    topics = Topics.from_settings(settings)
    await ensure_topics(settings)
    producer = make_producer(kafka, "trace-bench")
    await producer.start()
    size = 0
    try:
        for e in all_events:
            value = encode_event(e)
            size += len(value)
            await producer.send(_topic_of(topics, e), value, key=e.message_id.encode())
        await producer.flush()
    finally:
        await producer.stop()
    try:
        started = time.perf_counter()
        source = await LogSource.read(settings)
        read = time.perf_counter() - started
        steps = build_timeline(mid, source.pool(mid)).steps
        total = time.perf_counter() - started
        assert len(steps) == 15, len(steps)
        return {"events": len(source.events), "bytes": size, "read_s": round(read, 2), "read_and_timeline_s":
                round(total, 2), "events_per_s": round(len(source.events) / read)}
    finally:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.delete_topics(topics.all_topics())
        finally:
            await admin.close()


def _topic_of(topics: Topics, e: Event) -> str:
    if e.type.startswith("smtp_"):  # type: ignore[attr-defined]
        return topics.sessions
    return {"received": topics.received, "stage_result": topics.checked("spam"), "routed": topics.routed("lmtp"),
            "quarantined": topics.quarantine, "quarantine_action": topics.quarantine,
            "digest_sent": topics.quarantine}.get(e.type, topics.delivery)  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--traces", type=int, default=20)
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--bootstrap", default="", help="a running broker, for the topics' figures")
    parser.add_argument("--pad", type=int, default=3000, help="bytes added to each stage's details")
    args = parser.parse_args()
    base = template(args.pad)
    spacing = args.days * 86_400 / args.messages
    all_events, picks = [], []
    chosen = set(random.Random(1).sample(range(args.messages), args.traces))
    for i in range(args.messages):
        events, mid, header = message_events(i, base, i * spacing)
        all_events += events
        if i in chosen:
            received = next(e for e in events if e.type == "received")  # type: ignore[attr-defined]
            picks.append((mid, header, epoch_from_iso(received.time)))
    payload = sum(len(encode_event(e)) for e in all_events)
    result = {"messages": args.messages, "events_per_message": len(base[0]),
              "avg_event_bytes": round(payload / len(all_events)),
              "avg_message_bytes": round(payload / args.messages), "store": bench_store(all_events, picks)}
    if args.bootstrap:
        result["log"] = asyncio.run(bench_log(all_events, picks[0][0], args.bootstrap))
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
