"""The delivery ledger: the latest delivery state of every (message, recipient, destination).

A compacted topic keyed by ``<message_id>/<recipient>/<destination>`` whose value is the latest
event: `deferred` (waiting for a retry), or the final `delivered` / `bounced` / `discarded` (an
operator took it out of the queue: `poststelle queue delete`). A sink writes the
entry right after the next hop answered, before the batch's offsets are committed (write-ahead), and
reads the whole ledger at start and whenever it is assigned partitions. After a crash, the records
re-read from the last committed offset are checked against it, so only deliveries in flight at the
instant of the crash can be repeated. The retry service reads it to drop retries that are stale,
and `poststelle queue` lists its deferred entries.
"""
from __future__ import annotations

import asyncio
import logging

from pipeline.broker import watch
from pipeline.bus import kafka_bound
from pipeline.settings import KafkaSettings
from pipeline.tables import KafkaTransport
from schemas.events import (
    Bounced,
    Deferred,
    Delivered,
    Discarded,
    decode_event,
    encode_event,
)

__all__ = ["Ledger", "ledger_key", "State", "FinalEvent"]

log = logging.getLogger(__name__)
# a sink's deliveries of one batch finish within milliseconds of each other: their entries wait this
# long to share one produce request (the broker's cost is per request); a delivery's entry is still
# written before its batch commits, a few milliseconds later than alone
LEDGER_LINGER_MS = 10
FinalEvent = Delivered | Bounced | Discarded
State = Delivered | Bounced | Discarded | Deferred


def ledger_key(message_id: str, recipient: str, destination: str) -> str:
    return f"{message_id}/{recipient}/{destination}"


class Ledger:
    def __init__(self, kafka: KafkaSettings, topic: str, client_id: str) -> None:
        self.kafka, self.topic, self.client_id = kafka, topic, client_id
        self.entries: dict[str, State] = {}
        self._log = KafkaTransport(kafka, {"ledger": topic}, f"{client_id}-ledger", linger_ms=LEDGER_LINGER_MS)
        self._part = f"{client_id}-ledger"  # how it is named while it waits for the broker

    async def start(self) -> None:
        """Open the log and read it, waiting for the broker as long as it takes."""
        await watch().retry(self._part, self._log.open)
        await self.catch_up()

    async def catch_up(self) -> int:
        """Read every entry written so far (by any sink instance); returns how many were read.

        Waits for the broker while it is unreachable: what follows depends on the entries."""
        count = await watch().retry(self._part, lambda: self._log.catch_up(self._apply))
        log.debug("ledger %s: %d entries read, %d known", self.topic, count, len(self.entries))
        return count

    def _apply(self, _table: str, key: str, value: bytes | None) -> None:
        if value is None:  # tombstone: entry expired
            self.entries.pop(key, None)
            return
        try:
            event = decode_event(value, expect=(Delivered, Bounced, Discarded, Deferred))
        except ValueError as exc:
            log.warning("ledger: ignoring undecodable entry %r: %s", key, exc)
            return
        self.entries[key] = event  # type: ignore[assignment]

    def state(self, message_id: str, recipient: str, destination: str) -> State | None:
        return self.entries.get(ledger_key(message_id, recipient, destination))

    def final(self, message_id: str, recipient: str, destination: str) -> FinalEvent | None:
        """The delivered/bounced/discarded event, if this delivery is done."""
        state = self.state(message_id, recipient, destination)
        return None if isinstance(state, Deferred) else state

    def deferred(self) -> list[Deferred]:
        return [e for e in self.entries.values() if isinstance(e, Deferred)]

    async def record(self, event: State) -> None:
        """Durably note a delivery state (returns after the broker acknowledged it).

        While the broker is unreachable this waits and writes again (a record written twice is
        harmless: the later one has the same value); the delivery it notes has happened, so giving
        up would only make it happen again."""
        key = ledger_key(event.message_id, event.recipient, event.destination)
        value = encode_event(event)

        async def write() -> None:
            delivery = await self._log.write("ledger", key, value)
            try:
                async with asyncio.timeout(kafka_bound(self.kafka)):
                    await asyncio.shield(delivery)
            except TimeoutError:
                self._log.write_abandoned()  # its producer may be stuck for good; its successor writes
                raise

        await watch().retry(self._part, write)
        self.entries[key] = event

    async def close(self) -> None:
        await self._log.close()
