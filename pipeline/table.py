"""Reading a compacted topic as a table: every key's latest value, caught up on demand.

The delivery ledger and the verdict service keep state this way: they read the whole topic at
start, then, before each decision that depends on it, whatever was written since (`catch_up` reads
up to the end offsets of that moment, so a write acknowledged before the call is always seen).
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from pipeline.bus import behind, make_consumer, topic_partitions
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
        tps = await topic_partitions(self._reader, self.topic)
        self._reader.assign(tps)
        await self._reader.seek_to_beginning(*tps)

    async def catch_up(self, apply: Apply) -> int:
        """Apply every record written so far (by any process); returns how many were read."""
        tps = list(self._reader.assignment())
        ends = await self._reader.end_offsets(tps)
        count = 0
        while await behind(self._reader, ends):
            batch = await self._reader.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    if record.key is not None:
                        count += 1
                        apply(record.key, record.value)
        return count

    async def close(self) -> None:
        await self._reader.stop()
