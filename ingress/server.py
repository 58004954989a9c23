"""The ingress process: SMTP listener + Kafka producers."""
from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ingress.checks import CheckChain, CheckServices
from ingress.descriptors import connection_capacity
from ingress.handler import IngressHandler
from ingress.limits import ConnectionLimits
from ingress.smtp import IngressSMTP
from ingress.tls import server_context
from ingress.verdicts import OutcomeFollower
from pipeline.blobsegments import SegmentWriter
from pipeline.blobstore import FileBlobStore
from pipeline.broker import watch
from pipeline.bus import Topics
from pipeline.producers import RenewingProducer, TransactionalProducer
from pipeline.settings import IngressSettings, Settings
from schemas.events import AcceptedEarly, Event, Received, encode_event

__all__ = ["KafkaEventSink", "run_ingress", "make_protocol", "build_services"]

log = logging.getLogger(__name__)
MAX_PENDING_NOTIFICATIONS = 10_000
SESSION_EVENTS_EVERY = 0.1  # seconds: session events go out in batches, a few requests a second


class KafkaEventSink:
    """Sends ingress events to Kafka.

    `received` events are committed in Kafka transactions with group commit: the messages waiting
    at the same moment share one transaction. A message's record goes to the broker while its blob
    is still being written, and the transaction commits once every blob in it is durable, so the
    broker's round trips and the fsyncs overlap. `persist` returns only after the commit; when a
    blob, the records or the commit fail or time out, the producer is discarded and its successor
    (same transactional id) fences it, so the transaction is aborted and `read_committed` consumers
    do not see a message whose sender was told `451` (a message whose blob failed fails alone: the
    others of its transaction go again in the next). (One window remains, as in every MTA: the
    broker committed but the answer came too late; the sender's retry then makes a duplicate, never
    a loss.) (An idempotent producer alone would keep the record and deliver it when the broker
    comes back: the sender's retry would then make a second copy.) Session events, best effort, go
    through a producer of their own, in one batch per partition at most every `SESSION_EVENTS_EVERY`.

    Producers start lazily, so a broker that is down at start-up gives `451` answers and the ingress
    recovers by itself. A transaction commits only once every record in it is acknowledged (see
    `pipeline.producers`: aiokafka would commit without a record that failed), and a producer that
    failed is replaced, never reused.
    """

    def __init__(self, settings: Settings, instance: str = "0") -> None:
        self.settings = settings
        self.topics = Topics.from_settings(settings)
        self.transactional_id = f"{settings.kafka.topic_prefix}.ingress.{instance}"
        self.timeout = settings.ingress.persist_timeout
        self._tx = TransactionalProducer(settings.kafka, self.transactional_id,
                                         rotation=settings.kafka.transaction_rotation)
        self._plain = RenewingProducer(settings.kafka, "ingress-accepted-early")  # durable, someone waits for it
        self._sessions = RenewingProducer(settings.kafka, "ingress-sessions")  # best effort, in batches
        self._queue: list[_Pending] = []
        self._flushing: asyncio.Task | None = None
        self._notifications: list[Event] = []
        self._notifier: asyncio.Task | None = None
        self.dropped_notifications = 0
        self.notification_pause = SESSION_EVENTS_EVERY

    # -- received: transactional, group commit --------------------------------------------------

    async def persist(self, event: Received, stored: Awaitable[None]) -> None:
        """Commit `event` once `stored` (its blob being written) is done; raise if either fails."""
        pending = _Pending(event, asyncio.ensure_future(stored), asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush_queue())
        try:
            await asyncio.shield(pending.answer)
        finally:  # (the blob's outcome is read even when nobody waits for it any more)
            pending.stored.add_done_callback(_retrieved)

    async def _flush_queue(self) -> None:
        """Commit what is queued, batch after batch, until the queue is empty: what arrives during a
        commit goes into the next."""
        tx = self._tx
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                async with asyncio.timeout(self.timeout):
                    await self._commit(tx, batch)
            except _BlobsFailed as exc:  # the others go again, in a new transaction
                await tx.discard()
                self._queue[:0] = [p for p in batch if p not in exc.failed]
                for pending in exc.failed:
                    _answer(pending, _failure_of(pending.stored))
            except BaseException as exc:  # incl. timeout/cancel: every waiter must get an answer
                await tx.discard()
                for pending in batch:
                    _answer(pending, exc if isinstance(exc, Exception) else ConnectionError("ingress stopping"))
                if not isinstance(exc, Exception):
                    raise
            else:
                for pending in batch:
                    _answer(pending, None)

    async def _commit(self, tx: TransactionalProducer, batch: list[_Pending]) -> None:
        async with tx.transaction() as producer:
            await producer.send_keyed(self.topics.received,
                                      [(p.event.message_id.encode(), encode_event(p.event)) for p in batch])
            await producer.send_pending()  # AddPartitionsToTxn and Produce while the blobs are written
            await asyncio.wait([p.stored for p in batch])
            failed = [p for p in batch if _failure_of(p.stored) is not None]
            if failed:
                raise _BlobsFailed(failed)

    async def _discard_transactional(self) -> None:
        await self._tx.discard()

    # -- session events: best effort --------------------------------------------------------------

    def notify(self, event: Event) -> None:
        """Queue a session event; one task sends what is queued, batch after batch (no task per event)."""
        if len(self._notifications) >= MAX_PENDING_NOTIFICATIONS:
            self.dropped_notifications += 1
            return
        self._notifications.append(event)
        if self._notifier is None or self._notifier.done():
            self._notifier = asyncio.get_running_loop().create_task(self._send_notifications())

    async def _send_notifications(self) -> None:
        while self._notifications:
            batch, self._notifications = self._notifications, []
            try:
                async with asyncio.timeout(self.timeout):
                    records = [(_key(event), encode_event(event)) for event in batch]
                    deliveries = await self._sessions.send_keyed(self.topics.sessions, records)
                    answers = await asyncio.gather(*(d for d, _ in deliveries), return_exceptions=True)
                failed = sum(n for (_, n), a in zip(deliveries, answers) if isinstance(a, BaseException))
            except Exception as exc:
                failed = len(batch)
                log.debug("%d session events not sent: %s", failed, exc)
            self.dropped_notifications += failed
            # what comes meanwhile waits for the next batch: a few requests a second, not one per SMTP command
            await asyncio.sleep(self.notification_pause)

    # -- accepted before the verdict: durable -------------------------------------------------------

    async def accepted_early(self, event: AcceptedEarly) -> None:
        await (await self._plain.send(self.topics.accepted_early, encode_event(event), key=event.message_id.encode()))

    async def start(self) -> None:
        await self._tx.start()

    async def close(self, timeout: float = 5.0) -> None:
        if self._flushing is not None:
            await asyncio.wait([self._flushing], timeout=timeout)
        if self._notifier is not None:
            await asyncio.wait([self._notifier], timeout=timeout)
        await self._discard_transactional()
        await self._plain.stop()
        await self._sessions.stop()


@dataclass(eq=False)
class _Pending:
    """A `received` event on its way: its blob being stored, and the answer its session waits for."""
    event: Received
    stored: asyncio.Future
    answer: asyncio.Future


class _BlobsFailed(Exception):
    def __init__(self, failed: list[_Pending]) -> None:
        super().__init__(f"{len(failed)} blobs not stored")
        self.failed = failed


def _answer(pending: _Pending, failure: BaseException | None) -> None:
    if pending.answer.done():
        return
    if failure is None:
        pending.answer.set_result(None)
    else:
        pending.answer.set_exception(failure)


def _failure_of(stored: asyncio.Future) -> BaseException | None:
    if stored.cancelled():
        return OSError("storing the blob was cancelled")
    return stored.exception()


def _retrieved(stored: asyncio.Future) -> None:
    if not stored.cancelled():
        stored.exception()  # read: asyncio would log an exception nobody read


def _key(event: Event) -> bytes:
    """A session event's key: its message, else its session (so a session's events stay in order)."""
    return (event.message_id or getattr(event, "session_id", "")).encode()


async def _follow_outcomes(follower: OutcomeFollower) -> None:
    """Start following the outcomes topic, waiting for the broker (meanwhile: no wait for verdicts)."""

    async def start() -> None:
        try:
            await follower.start()
        except BaseException:
            await follower.reset()
            raise

    await watch().retry("outcomes", start, errors=(Exception,))
    log.info("following %s: answering at DATA with the pipeline's verdict", follower.topic)


def make_protocol(handler: IngressHandler, settings: IngressSettings, *, tls_context: ssl.SSLContext | None = None,
                  implicit_tls: bool = False) -> Callable[[], IngressSMTP]:
    """The protocol factory of one listener.

    With `tls_context` and not `implicit_tls`, STARTTLS is offered: on the MX listener for those who
    want it (RFC 3207 4: a public MX must not require it), on submission (587) required before
    anything but EHLO/NOOP/QUIT; with `implicit_tls` the socket itself is TLS (465), so AUTH needs no
    STARTTLS. AUTH is only ever accepted over TLS.
    """

    def protocol() -> IngressSMTP:
        return IngressSMTP(
            handler,
            data_size_limit=settings.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=handler.hostname,  # never None: aiosmtpd would call getfqdn() per connection
            ident="poststelle",
            timeout=settings.data_timeout,
            max_bad_commands=settings.max_bad_commands,
            tls_context=None if implicit_tls else tls_context,
            require_starttls=tls_context is not None and not implicit_tls and handler.listener != "mx",
            auth_require_tls=not implicit_tls,
            loop=asyncio.get_running_loop(),  # else aiosmtpd asks for it under warnings.catch_warnings()
        )

    return protocol


def build_services(settings: Settings, sink: KafkaEventSink) -> CheckServices:
    """DNS resolver and directory, shared by every check of every listener."""
    from pipeline.clients.directory import Directory
    from pipeline.clients.dns import Resolver

    return CheckServices(
        settings=settings,
        resolver=Resolver.from_settings(settings.dns),
        directory=Directory.from_settings(settings.ldap),
        local_domains=frozenset(d.lower() for d in settings.ingress.local_domains),
        notify=sink.notify,
    )


async def run_ingress(settings: Settings, stop: asyncio.Event, on_ready: Callable[[], None] | None = None,
                      instance: str = "0") -> None:
    s = settings.ingress
    blobs = FileBlobStore(settings.home / "blobs")
    segments = SegmentWriter(blobs.root) if settings.blobs.segments else None
    sink = KafkaEventSink(settings, instance=instance)
    services = build_services(settings, sink)
    limits = ConnectionLimits(connection_capacity(s.max_connections), s.max_connections_per_ip)  # raises RLIMIT_NOFILE
    chains = [CheckChain.build(s.checks, settings.checks, services, s.check_timeout)]
    verdicts = OutcomeFollower(settings.kafka, sink.topics.outcomes) if s.verdict_wait > 0 else None
    handlers = [IngressHandler(s, blobs, sink, chains[0], listener="mx", local_domains=services.local_domains,
                               limits=limits, verdicts=verdicts, message=settings.message, segments=segments)]
    loop = asyncio.get_running_loop()
    mx_tls = server_context(settings, "mx") if s.starttls else None
    listeners = [(handlers[0], make_protocol(handlers[0], s, tls_context=mx_tls), s.host, s.port, None)]
    sub = settings.submission
    if sub.enabled:
        tls = server_context(settings)
        chains.append(CheckChain.build(sub.checks, settings.checks, services, s.check_timeout))
        handler = IngressHandler(s, blobs, sink, chains[1], listener="submission",
                                 local_domains=services.local_domains, limits=limits,
                                 authenticator=services.directory, submission=sub, verdicts=verdicts,
                                 message=settings.message, segments=segments)
        handlers.append(handler)
        if sub.port:
            listeners.append((handler, make_protocol(handler, s, tls_context=tls), sub.host, sub.port, None))
        if sub.tls_port:
            listeners.append((handler, make_protocol(handler, s, implicit_tls=True), sub.host, sub.tls_port, tls))
    for chain in chains:
        await chain.start()
    follower_start = asyncio.create_task(_follow_outcomes(verdicts)) if verdicts is not None else None
    servers = []
    shared = settings.supervisor.processes.get("ingress", 1) > 1  # several ingress processes, one port
    for _, factory, host, port, ssl_context in listeners:
        servers.append(await loop.create_server(factory, host=host, port=port, reuse_address=True, reuse_port=shared,
                                                ssl=ssl_context, backlog=s.listen_backlog))
        log.info("ingress listening on %s:%d%s", host, port, " (implicit TLS)" if ssl_context else "")
    try:
        await sink.start()  # warm up; failures here are fine, persist() retries
    except Exception as exc:
        log.warning("broker not reachable at start-up (%s); answering 451 until it is", exc)
    if on_ready:
        on_ready()
    await stop.wait()
    # stop accepting, let messages being persisted get their answer, then close the producers
    for server in servers:
        server.close()
    for handler in handlers:
        handler.shut_down()
    try:
        await asyncio.wait_for(asyncio.gather(*(h.drained() for h in handlers)), 2 * s.persist_timeout)
    except asyncio.TimeoutError:
        log.warning("shutting down with messages still being persisted (they get no 250)")
    if follower_start is not None:
        follower_start.cancel()
        await asyncio.gather(follower_start, return_exceptions=True)
        await verdicts.close()
    await sink.close()
    if segments is not None:
        await segments.close()
    for chain in chains:
        await chain.close()
    for service in (services.resolver, services.directory):
        close = getattr(service, "close", None)
        if close is not None:
            await close()
