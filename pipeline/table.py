"""Reading a compacted topic as a table: every key's latest value, caught up on demand.

The delivery ledger and the verdict service keep state this way: they read the whole topic at
start, then, before each decision that depends on it, whatever was written since (`catch_up` reads
up to the end offsets of that moment, so a write acknowledged before the call is always seen).
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from aiokafka import TopicPartition

from pipeline.bus import make_consumer
from pipeline.settings import KafkaSettings

__all__ = ["CompactedReader", "Apply"]

log = logging.getLogger(__name__)

Apply = Callable[[bytes, bytes | None], None]  # (key, value or None for a tombstone)


class CompactedReader:
    def __init__(self, kafka: KafkaSettings, topic: str, client_id: str) -> None:
        self.topic = topic
        self._reader = make_consumer(kafka, None, client_id)

    async def start(self) -> None:
        """Assign every partition of the topic, from the beginning."""
        await self._reader.start()
        partitions = self._reader.partitions_for_topic(self.topic) or set()
        if not partitions:
            await self._reader._client.force_metadata_update()  # topic created just now
            partitions = self._reader.partitions_for_topic(self.topic) or set()
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        self._reader.assign(tps)
        await self._reader.seek_to_beginning(*tps)

    async def catch_up(self, apply: Apply) -> int:
        """Apply every record written so far (by any process); returns how many were read."""
        tps = list(self._reader.assignment())
        ends = await self._reader.end_offsets(tps)
        count = 0
        while await self._behind(ends):
            batch = await self._reader.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    if record.key is not None:
                        count += 1
                        apply(record.key, record.value)
        return count

    async def _behind(self, ends: dict[TopicPartition, int]) -> bool:
        for tp, end in ends.items():
            if await self._reader.position(tp) < end:
                return True
        return False

    async def close(self) -> None:
        await self._reader.stop()
