"""Consumer lag as the broker sees it: per group, committed offsets against the end offsets.

`poststelle status` shows it next to each component's state, read straight from the broker (no
metrics endpoint needed; the running components publish their own view as
``poststelle_consumer_lag``, see `pipeline.metrics`). A partition the group has not committed
in yet counts from its beginning: that is where the group will start (``auto_offset_reset``
earliest). End offsets are read as a ``read_committed`` consumer reads them (the last stable
offset), so an open transaction does not count as lag.
"""
from __future__ import annotations

import asyncio
from collections.abc import Mapping

from aiokafka import TopicPartition

from pipeline.bus import make_admin, make_consumer, stop_quietly, topic_partitions
from pipeline.settings import KafkaSettings

__all__ = ["group_lags"]


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
            lags: dict[str, int] = {}
            for group, topics in groups.items():
                committed = await admin.list_consumer_group_offsets(group)
                lag = 0
                for tp in (tp for topic in topics for tp in partitions.get(topic, [])):
                    done = committed.get(tp)
                    start = done.offset if done is not None and done.offset >= 0 else begins[tp]
                    lag += max(0, ends[tp] - start)
                lags[group] = lag
            return lags
    finally:
        await asyncio.gather(stop_quietly(reader), admin.close(), return_exceptions=True)
