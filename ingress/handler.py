"""The ingress handler: SMTP in, a durable `received` event out, nothing more.

`250` is answered only after the raw message is fsynced in the blob store *and* its `received` event
is committed in a Kafka transaction (see `ingress.server.KafkaEventSink`). If either fails or takes
longer than `ingress.persist_timeout`, the answer is `451 4.3.0`: the client keeps the message and
retries.
"""
from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass
from typing import Protocol

from aiosmtpd.smtp import Envelope as SmtpEnvelope
from aiosmtpd.smtp import Session

from ingress.addresses import AddressError, parse_address
from ingress.replies import Replies
from ingress.smtp import IngressSMTP
from ingress.trace import received_header, summarize_headers
from pipeline.blobstore import BlobStore
from pipeline.settings import IngressSettings
from schemas.events import (
    Client,
    Envelope,
    Event,
    Received,
    Reply,
    SmtpConnect,
    SmtpReject,
)
from schemas.ids import new_id

__all__ = ["IngressHandler", "EventSink"]

log = logging.getLogger(__name__)


class EventSink(Protocol):
    """Where the handler sends events (the Kafka producer in production, a list in unit tests)."""

    async def persist(self, event: Received) -> None:
        """Return only once `event` is durable; raise otherwise, and then it must never surface
        (within `IngressSettings.persist_timeout`)."""

    def notify(self, event: Event) -> None:
        """Best effort: session events for analytics, never delaying or failing SMTP."""


@dataclass(slots=True)
class _SessionInfo:
    session_id: str


class IngressHandler:
    def __init__(self, settings: IngressSettings, blobs: BlobStore, events: EventSink) -> None:
        self.settings = settings
        self.blobs = blobs
        self.events = events
        self.local_domains = {d.lower() for d in settings.local_domains}
        self.hostname = settings.hostname or socket.getfqdn()
        self._persisting = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def drained(self) -> None:
        """Return once no message is being persisted (for a clean shutdown)."""
        await self._idle.wait()

    # -- session ------------------------------------------------------------------------------

    def on_protocol_violation(self, session: Session, reply: str) -> None:
        """A command line broke the line rules (bare CR/LF, NUL): the session is being closed."""
        self._reject(session, SmtpEnvelope(), "command", "smuggling", "illegal_line_ending", reply)

    def on_connect(self, session: Session) -> None:
        session.poststelle = _SessionInfo(session_id=new_id())  # type: ignore[attr-defined]
        ip, port = _peer(session)
        self.events.notify(SmtpConnect(session_id=_sid(session), client_ip=ip, client_port=port))

    async def handle_EHLO(self, server, session, envelope, hostname: str, responses: list[str]):
        session.host_name = hostname
        extra = ["250-PIPELINING", "250-ENHANCEDSTATUSCODES"]
        return responses[:-1] + extra + responses[-1:]

    # -- envelope -----------------------------------------------------------------------------

    async def handle_MAIL(self, server, session, envelope: SmtpEnvelope, address: str, options):
        envelope.mail_from = address  # aiosmtpd: "<>" for the null sender (it must stay truthy)
        envelope.mail_options.extend(options)
        return Replies.SENDER_OK

    async def handle_RCPT(self, server, session, envelope: SmtpEnvelope, address: str, options):
        try:
            parsed = parse_address(address)
        except AddressError:
            return self._reject(session, envelope, "rcpt", "address", "bad_recipient_syntax",
                                Replies.BAD_RECIPIENT_SYNTAX, recipient=address)
        if parsed.is_literal or parsed.domain not in self.local_domains:
            return self._reject(session, envelope, "rcpt", "relay", "relay_denied",
                                Replies.RELAY_DENIED, recipient=address)
        envelope.rcpt_tos.append(str(parsed))
        envelope.rcpt_options.extend(options)
        return Replies.RECIPIENT_OK

    # -- message ------------------------------------------------------------------------------

    async def handle_DATA(self, server: IngressSMTP, session, envelope: SmtpEnvelope) -> str:
        offence = server.data_offence
        if offence is not None:
            server.clear_data_offence()
            server.close_after_reply()
            return self._reject(session, envelope, "data", "smuggling", "illegal_line_ending", offence)
        message_id = new_id()
        ip, port = _peer(session)
        trace = received_header(
            helo=session.host_name or "",
            client_ip=ip,
            reverse_name="",
            by_host=self.hostname,
            protocol=_protocol(session, envelope),
            message_id=message_id,
            recipients=list(envelope.rcpt_tos),
        )
        raw = trace + envelope.original_content
        self._persisting += 1
        self._idle.clear()
        try:
            ref = await asyncio.wait_for(asyncio.to_thread(self.blobs.put, raw), self.settings.persist_timeout)
            event = Received(
                message_id=message_id,
                envelope=Envelope(
                    mail_from=_sender(envelope),
                    rcpt_to=list(envelope.rcpt_tos),
                    smtputf8=envelope.smtp_utf8,
                    body="8BITMIME" if "BODY=8BITMIME" in _upper(envelope.mail_options) else "7BIT",
                ),
                client=Client(ip=ip, port=port, helo=session.host_name or "", tls=session.ssl is not None),
                blob=ref,
                headers=summarize_headers(envelope.original_content),
                session_id=_sid(session),
                ingress_host=self.hostname,
            )
            # the sink bounds this by persist_timeout and aborts the event on failure, so it is never
            # delivered behind a 451; the outer bound only guards against a sink that hangs
            await asyncio.wait_for(self.events.persist(event), 2 * self.settings.persist_timeout)
        except Exception as exc:  # broker down, disk full, timeout: the client must retry
            log.warning("message %s not persisted: %s: %s", message_id, type(exc).__name__, exc)
            return self._reject(session, envelope, "data", "persist", "persist_failed", Replies.PERSIST_FAILED)
        finally:
            self._persisting -= 1
            if self._persisting == 0:
                self._idle.set()
        log.info("message %s accepted from [%s] (%d bytes, %d rcpt)", message_id, ip, ref.size,
                 len(envelope.rcpt_tos))
        return Replies.queued(message_id)

    # -- helpers ------------------------------------------------------------------------------

    def _reject(self, session, envelope, phase: str, check: str, reason_code: str, reply: str,
                recipient: str = "") -> str:
        code, _, rest = reply.partition(" ")
        enhanced, _, text = rest.partition(" ")
        self.events.notify(
            SmtpReject(
                session_id=_sid(session),
                client_ip=_peer(session)[0],
                phase=phase,  # type: ignore[arg-type]
                check=check,
                reason_code=reason_code,
                reply=Reply(code=int(code), enhanced=enhanced, text=text),
                helo=session.host_name or "",
                sender=_sender(envelope),
                recipient=recipient,
            )
        )
        return reply


def _peer(session: Session) -> tuple[str, int]:
    peer = session.peer or ("", 0)
    return str(peer[0]), int(peer[1])


def _sid(session: Session) -> str:
    info = getattr(session, "poststelle", None)
    return info.session_id if info else ""


def _sender(envelope: SmtpEnvelope) -> str:
    """The envelope sender as events carry it: "" for the null sender <>."""
    return "" if envelope.mail_from in (None, "<>") else envelope.mail_from


def _upper(options: list[str]) -> list[str]:
    return [o.upper() for o in options]


def _protocol(session: Session, envelope: SmtpEnvelope) -> str:
    """The `with` keyword of the Received line (RFC 3848, RFC 6531)."""
    if envelope.smtp_utf8:
        base = "UTF8SMTP"
    else:
        base = "ESMTP" if session.extended_smtp else "SMTP"
    if session.ssl is not None:
        base += "S"
    if session.authenticated:
        base += "A"
    return base
