"""The ingress process: SMTP listener + durable Kafka producer."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaProducer

from ingress.handler import IngressHandler
from ingress.smtp import IngressSMTP
from pipeline.blobstore import FileBlobStore
from pipeline.bus import Topics, make_producer
from pipeline.settings import Settings
from schemas.events import Event, Received, encode_event

__all__ = ["KafkaEventSink", "run_ingress"]

log = logging.getLogger(__name__)
MAX_PENDING_NOTIFICATIONS = 10_000


class KafkaEventSink:
    """Sends ingress events to Kafka. Starts its producer lazily, so a broker that is down at
    start-up gives `451` answers (and recovers by itself) instead of a crashed ingress."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = Topics.from_settings(settings)
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self._pending: set[asyncio.Task] = set()
        self.dropped_notifications = 0

    async def _started(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is None:
                producer = make_producer(self.settings.kafka, "ingress")
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
            return self._producer

    async def persist(self, event: Received) -> None:
        producer = await self._started()
        await producer.send_and_wait(self.topics.received, encode_event(event), key=event.message_id.encode())

    def notify(self, event: Event) -> None:
        if len(self._pending) >= MAX_PENDING_NOTIFICATIONS:
            self.dropped_notifications += 1
            return
        task = asyncio.get_running_loop().create_task(self._send_notification(event))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _send_notification(self, event: Event) -> None:
        try:
            producer = await self._started()
            await producer.send_and_wait(self.topics.sessions, encode_event(event),
                                         key=(event.message_id or getattr(event, "session_id", "")).encode())
        except Exception as exc:
            self.dropped_notifications += 1
            log.debug("session event %s not sent: %s", event.id, exc)

    async def close(self, timeout: float = 5.0) -> None:
        if self._pending:
            await asyncio.wait(self._pending, timeout=timeout)
        if self._producer is not None:
            await self._producer.stop()


async def run_ingress(settings: Settings, stop: asyncio.Event, on_ready: Callable[[], None] | None = None) -> None:
    s = settings.ingress
    blobs = FileBlobStore(settings.home / "blobs")
    sink = KafkaEventSink(settings)
    handler = IngressHandler(s, blobs, sink)

    def protocol() -> IngressSMTP:
        return IngressSMTP(
            handler,
            data_size_limit=s.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=s.hostname,
            ident="poststelle",
            timeout=s.data_timeout,
        )

    loop = asyncio.get_running_loop()
    server = await loop.create_server(protocol, host=s.host, port=s.port, reuse_address=True)
    log.info("ingress listening on %s:%d", s.host, s.port)
    try:
        await sink._started()  # warm up; failures here are fine, persist() retries
    except Exception as exc:
        log.warning("broker not reachable at start-up (%s); answering 451 until it is", exc)
    if on_ready:
        on_ready()
    await stop.wait()
    # stop accepting, let messages being persisted get their answer, then close the producer
    server.close()
    try:
        await asyncio.wait_for(handler.drained(), s.persist_timeout)
    except asyncio.TimeoutError:
        log.warning("shutting down with messages still being persisted (they get no 250)")
    await sink.close()
