"""Consumer lag as the broker sees it: per group, the records after its committed offsets.

`poststelle status` shows it next to each component's state, read straight from the broker (no
metrics endpoint needed; the running components publish their own view as
``poststelle_consumer_lag``, see `pipeline.metrics`). A partition the group has not committed in
yet counts from its beginning: that is where the group will start (``auto_offset_reset``
earliest).

The end offset minus the committed offset is not the lag of a topic written in transactions: each
transaction leaves a commit marker, an offset that is no record, after the last record a hop
commits past (every quiet partition would show a lag of 1), and aborted records are never read.
So a small difference (up to `EXACT_UP_TO` per partition) is counted: the records between the
committed and the end offset are read as a ``read_committed`` consumer reads them. A larger one is
taken as it is (off by the markers in it, which does not matter at that size).
"""
from __future__ import annotations

import asyncio
from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.bus import behind, make_admin, make_consumer, stop_quietly, topic_partitions
from pipeline.settings import KafkaSettings

__all__ = ["group_lags", "EXACT_UP_TO"]

EXACT_UP_TO = 200  # records per partition below which the lag is counted rather than subtracted


async def group_lags(k: KafkaSettings, groups: Mapping[str, list[str]], timeout: float = 5.0) -> dict[str, int]:
    """The lag (records, summed over partitions) of each group in `groups` (group id → its input
    topics). Raises `TimeoutError` or a `KafkaError` when the broker does not answer in time."""
    admin = make_admin(k, "status")
    reader = make_consumer(k, None, "status")
    try:
        async with asyncio.timeout(timeout):
            await asyncio.gather(admin.start(), reader.start())
            partitions: dict[str, list[TopicPartition]] = {}
            for topic in sorted({t for topics in groups.values() for t in topics}):
                partitions[topic] = await topic_partitions(reader, topic)
            every = [tp for tps in partitions.values() for tp in tps]
            ends = await reader.end_offsets(every) if every else {}
            begins = await reader.beginning_offsets(every) if every else {}
            starts: dict[str, dict[TopicPartition, int]] = {}
            for group, topics in groups.items():
                committed = await admin.list_consumer_group_offsets(group)
                starts[group] = {}
                for tp in (tp for topic in topics for tp in partitions.get(topic, [])):
                    done = committed.get(tp)
                    starts[group][tp] = done.offset if done is not None and done.offset >= 0 else begins[tp]
            lowest: dict[TopicPartition, int] = {}
            for by_tp in starts.values():
                for tp, start in by_tp.items():
                    lowest[tp] = min(start, lowest.get(tp, start))
            exact = await _record_offsets(reader, {tp: (start, ends[tp]) for tp, start in lowest.items()
                                                   if 0 < ends[tp] - start <= EXACT_UP_TO})
            return {group: sum(_lag(start, ends[tp], exact.get(tp)) for tp, start in by_tp.items())
                    for group, by_tp in starts.items()}
    finally:
        await asyncio.gather(stop_quietly(reader), admin.close(), return_exceptions=True)


def _lag(start: int, end: int, records: list[int] | None) -> int:
    """Records at or after `start`: counted when they were read, else the offsets between."""
    if records is None:
        return max(0, end - start)
    return sum(1 for offset in records if offset >= start)


async def _record_offsets(reader: AIOKafkaConsumer, spans: dict[TopicPartition, tuple[int, int]]
                          ) -> dict[TopicPartition, list[int]]:
    """The offsets of the records a read_committed consumer reads in each partition's span
    [start, end), all partitions at once."""
    if not spans:
        return {}
    reader.assign(list(spans))
    for tp, (start, _) in spans.items():
        reader.seek(tp, start)
    ends = {tp: end for tp, (_, end) in spans.items()}
    found: dict[TopicPartition, list[int]] = {tp: [] for tp in spans}
    while await behind(reader, ends):
        for tp, records in (await reader.getmany(timeout_ms=200)).items():
            found[tp].extend(r.offset for r in records if r.offset < ends[tp])
    return found
