"""The ingress handler: SMTP in, a durable `received` event out, nothing more.

Every decision before the message is accepted is made by the check chain (`ingress.checks`): the
connect phase runs before the banner, then MAIL, RCPT and DATA. A refusal is answered with the
check's reply and recorded as an `smtp_reject` event (phase, check, reason code, client, sender,
recipient); results that are not refusals (a greylisting pass, a skipped lookup) become `smtp_check`
events. Connection limits, recipient limits and AUTH are the handler's own.

`250` is answered only after the raw message is fsynced in the blob store *and* its `received` event
is committed in a Kafka transaction (see `ingress.server.KafkaEventSink`). If either fails or takes
longer than `ingress.persist_timeout`, the answer is `451 4.3.0`: the client keeps the message and
retries.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

from aiosmtpd.smtp import AuthResult
from aiosmtpd.smtp import Envelope as SmtpEnvelope

from ingress.accepted import peer, received_event, trace_header
from ingress.addresses import AddressError, parse_address, resolve_route
from ingress.checks import CheckChain, CheckContext, CheckServices, Networks, Phase
from ingress.checks.relay import RelayCheck, RelaySettings
from ingress.limits import TOO_MANY_AUTH_FAILURES, ConnectionLimits
from ingress.ports import Authenticator, EventSink
from ingress.replies import Replies
from ingress.smtp import IngressSMTP
from ingress.verdicts import OutcomeFollower, Pending, first_of, refusal_text
from pipeline.blobsegments import SegmentWriter
from pipeline.blobstore import BlobStore
from pipeline.failures import FailureWindow
from pipeline.settings import IngressSettings, MessageSettings, SubmissionSettings
from schemas.events import (
    AcceptedEarly,
    Reply,
    SmtpCheck,
    SmtpConnect,
    SmtpReject,
)
from schemas.ids import new_id

# a message up to this size is hashed for its blob reference on the event loop (about 0.2 ms at most)
INLINE_HASH_BYTES = 256 * 1024
SKIPPED_TEMPFAIL = "skipped_tempfail"  # the note of a check that let the client through after a DNS timeout

__all__ = ["IngressHandler", "EventSink", "Authenticator"]

log = logging.getLogger(__name__)


class IngressHandler:
    """One listener's SMTP decisions: `listener` is "mx" (port 25) or "submission"."""

    def __init__(
        self,
        settings: IngressSettings,
        blobs: BlobStore,
        events: EventSink,
        chain: CheckChain | None = None,
        *,
        listener: str = "mx",
        local_domains: frozenset[str] | None = None,
        limits: ConnectionLimits | None = None,
        authenticator: Authenticator | None = None,
        submission: SubmissionSettings | None = None,
        verdicts: OutcomeFollower | None = None,
        message: MessageSettings | None = None,
        segments: SegmentWriter | None = None,
    ) -> None:
        self.settings = settings
        self.blobs = blobs
        self.segments = segments  # where messages are appended (`[blobs] segments`), else a file each
        self.events = events
        self.listener = listener
        self.local_domains = local_domains or frozenset(d.lower() for d in settings.local_domains)
        # without a configured chain: relay control only (the one check no listener may lack)
        self.chain = chain or CheckChain(
            [RelayCheck(RelaySettings(), CheckServices(local_domains=self.local_domains))], settings.check_timeout
        )
        self.hostname = settings.hostname or socket.getfqdn()
        self.allowlist = Networks(settings.client_allowlist)
        self.relay_networks = Networks(settings.relay_networks)
        self.limits = limits or ConnectionLimits(settings.max_connections, settings.max_connections_per_ip)
        self.authenticator = authenticator
        sub = submission or SubmissionSettings()
        self.failed_auth = FailureWindow(sub.max_auth_failures, sub.auth_failure_window)
        self.verdicts = verdicts
        self.message_caps = message or MessageSettings()  # how the DATA bytes are parsed ([message])
        self._persisting = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = asyncio.Event()
        self._sessions: set[IngressSMTP] = set()

    async def drained(self) -> None:
        """Return once no message is being persisted (for a clean shutdown)."""
        await self._idle.wait()

    def shut_down(self) -> None:
        """The ingress stops: no message is taken on any more, and every session ends with a 421.

        A message being persisted gets its answer first (`drained` waits for it), and so does one
        waiting for its verdict (accepted early, at once). An idle session gets the 421 now, a busy
        one right after the reply to its command; a message whose DATA ends from now on gets the 421
        instead of being persisted. So nothing is committed that its client was not answered for.
        """
        self._stopping.set()
        for server in list(self._sessions):
            server.shut_down(Replies.SHUTTING_DOWN)

    # -- connection -----------------------------------------------------------------------------

    async def greet(self, server: IngressSMTP) -> str | None:
        """Before the banner: limits, the connect-phase checks, the early-talker wait.

        Returns the refusal to send instead of the banner, or None to greet.
        """
        ip, port = peer(server.session)
        ctx = CheckContext(
            session_id=new_id(),
            client_ip=ip,
            listener=self.listener,
            tls=server.transport is not None and server.transport.get_extra_info("ssl_object") is not None,
            allowlisted=ip in self.allowlist,
            trusted=ip in self.relay_networks,
            message_caps=self.message_caps,
        )
        server.context = ctx
        self._sessions.add(server)
        self.events.notify(SmtpConnect(session_id=ctx.session_id, client_ip=ip, client_port=port))
        if self._stopping.is_set():
            ctx.client_ip = ""  # not counted: nothing to release on disconnect
            return self._reject(ctx, "connect", "limits", "shutting_down", Replies.SHUTTING_DOWN, ip=ip)
        refusal = self.limits.acquire(ip, exempt=ctx.allowlisted or ctx.trusted)
        if refusal is not None:
            ctx.client_ip = ""  # not counted: nothing to release on disconnect
            return self._reject(ctx, "connect", "limits", "too_many_connections", refusal, ip=ip)
        if self.settings.greet_delay <= 0:
            return await self._run(ctx, "connect")
        checks = asyncio.ensure_future(self._run(ctx, "connect"))  # during the wait for an early talker
        if await _talks_first(server, self.settings.greet_delay):
            checks.cancel()
            return self._reject(ctx, "connect", "early_talker", "early_talker", Replies.EARLY_TALKER)
        return await checks

    def idle_timeout(self) -> float:
        """Seconds a session may idle before its next command (shorter under stress: `ingress.limits`)."""
        return self.limits.idle_timeout(self.settings)

    def on_disconnect(self, server: IngressSMTP) -> None:
        self._sessions.discard(server)
        ctx: CheckContext | None = server.context
        if ctx is not None and ctx.client_ip:
            self.limits.release(ctx.client_ip)

    def on_starttls(self, server: IngressSMTP) -> None:
        """RFC 3207 4.2: after STARTTLS the client starts over with EHLO; facts from before are void."""
        ctx: CheckContext | None = server.context
        if ctx is not None:
            ctx.tls = True
            ctx.helo = ""
            ctx.reset_transaction()

    def on_protocol_violation(self, server: IngressSMTP, reply: str) -> None:
        """A command line broke the line rules (bare CR/LF, NUL): the session is being closed."""
        self._reject(_context(server), "command", "smuggling", "illegal_line_ending", reply)

    async def handle_EHLO(self, server, session, envelope, hostname: str, responses: list[str]):
        ctx = _context(server)
        ctx.helo = hostname
        session.host_name = hostname
        refusal = await self._run(ctx, "helo", hostname)
        if refusal is not None:
            return [refusal]
        extra = ["250-PIPELINING", "250-ENHANCEDSTATUSCODES"]
        return responses[:-1] + extra + responses[-1:]

    async def handle_HELO(self, server, session, envelope, hostname: str):
        ctx = _context(server)
        ctx.helo = hostname
        session.host_name = hostname
        refusal = await self._run(ctx, "helo", hostname)
        return refusal or f"250 {server.hostname}"

    async def handle_RSET(self, server, session, envelope):
        _context(server).reset_transaction()
        return "250 2.0.0 OK"

    # -- AUTH (submission) ------------------------------------------------------------------------

    async def authenticate(self, server: IngressSMTP, mechanism: str, login: str, password: str) -> AuthResult:
        ctx = _context(server)
        if self.authenticator is None:
            return AuthResult(success=False, handled=False, message=Replies.AUTH_NOT_AVAILABLE)
        if self.failed_auth.blocked(ctx.client_ip):
            reply = self._reject(ctx, "auth", "auth", "auth_rate_limited", TOO_MANY_AUTH_FAILURES)
            return AuthResult(success=False, handled=False, message=reply)
        try:
            account = await asyncio.wait_for(self.authenticator.authenticate(login, password),
                                             self.settings.check_timeout)
        except Exception as exc:  # directory down or slow: the client may try again later
            log.warning("AUTH %s for %r from [%s] not verified: %s: %s", mechanism, login, ctx.client_ip,
                        type(exc).__name__, exc)
            reply = self._reject(ctx, "auth", "auth", "auth_unavailable", Replies.AUTH_TEMPFAIL)
            return AuthResult(success=False, handled=False, message=reply)
        if account is None:
            self.failed_auth.record(ctx.client_ip)
            log.info("AUTH %s failed for %r from [%s]", mechanism, login, ctx.client_ip)
            reply = self._reject(ctx, "auth", "auth", "auth_failed", Replies.AUTH_FAILED)
            return AuthResult(success=False, handled=False, message=reply)
        ctx.authenticated_as = account.uid or login
        ctx.auth_addresses = frozenset(a.lower() for a in account.addresses)
        self._note(ctx, "auth", "auth", "authenticated")
        log.info("AUTH %s: [%s] is %s", mechanism, ctx.client_ip, ctx.authenticated_as)
        return AuthResult(success=True, auth_data=ctx.authenticated_as)

    # -- envelope -----------------------------------------------------------------------------

    async def handle_MAIL(self, server, session, envelope: SmtpEnvelope, address: str, options):
        ctx = _context(server)
        ctx.reset_transaction()
        sender = "" if address in ("<>", "") else address
        ctx.sender = sender
        refusal = await self._run(ctx, "mail", sender)
        if refusal is not None:
            ctx.sender = None
            return refusal
        envelope.mail_from = address  # aiosmtpd: "<>" for the null sender (it must stay truthy)
        envelope.mail_options.extend(options)
        return Replies.SENDER_OK

    async def handle_RCPT(self, server, session, envelope: SmtpEnvelope, address: str, options):
        ctx = _context(server)
        if len(envelope.rcpt_tos) >= self.settings.max_recipients:
            return self._reject(ctx, "rcpt", "limits", "too_many_recipients", Replies.TOO_MANY_RECIPIENTS,
                                recipient=address)
        address = self._resolve_route(ctx, address)
        refusal = await self._run(ctx, "rcpt", address)
        if refusal is not None:
            return refusal
        recipient = str(parse_address(address))  # the relay check refused what does not parse
        if recipient in envelope.rcpt_tos:
            return Replies.RECIPIENT_OK  # one copy per address, as Postfix's cleanup keeps it
        envelope.rcpt_tos.append(recipient)
        envelope.rcpt_options.extend(options)
        ctx.recipients.append(recipient)
        return Replies.RECIPIENT_OK

    def _resolve_route(self, ctx: CheckContext, address: str) -> str:
        """Authenticated and trusted clients may route (`r%ext.test@school.test`); others may not."""
        if not (ctx.authenticated or ctx.trusted):
            return address  # the relay check refuses a routing form
        try:
            resolved = str(resolve_route(address, self.local_domains))
        except AddressError:
            return address
        if resolved != address:
            log.info("RCPT %r from [%s] resolved to <%s>", address, ctx.client_ip, resolved)
        return resolved

    # -- message ------------------------------------------------------------------------------

    async def handle_DATA(self, server: IngressSMTP, session, envelope: SmtpEnvelope) -> str:
        ctx = _context(server)
        offence = server.data_offence
        if offence is not None:
            server.clear_data_offence()
            server.close_after_reply()
            return self._reject(ctx, "data", "smuggling", "illegal_line_ending", offence)
        hops = sum(f.key == "received" for f in ctx.message_header(envelope.original_content).fields)
        if hops > self.settings.max_received_headers:
            log.warning("message from [%s] refused: %d Received fields, a mail loop (ingress.max_received_headers %d)",
                        ctx.client_ip, hops, self.settings.max_received_headers)
            return self._reject(ctx, "data", "hops", "too_many_hops", Replies.TOO_MANY_HOPS)
        refusal = await self._run(ctx, "data", envelope.original_content)
        if refusal is not None:
            return refusal
        message_id = new_id()
        ip, _ = peer(session)
        trace = trace_header(session, envelope, ctx, message_id, self.hostname)
        raw = trace + envelope.original_content
        if self._stopping.is_set():  # from here to `_persisting += 1` nothing awaits: `drained` sees it
            log.info("message from [%s] not taken: the ingress is shutting down", ip)
            server.close_after_reply()
            return self._reject(ctx, "data", "persist", "shutting_down", Replies.SHUTTING_DOWN)
        wait = self._verdict_wait()
        # the client is answered by then: persist, the verdict wait, and the accepted-early record
        answer_by = time.time() + 2 * self.settings.persist_timeout + wait if wait else 0.0
        pending = self.verdicts.expect(message_id, list(envelope.rcpt_tos)) if wait else None
        self._persisting += 1
        self._idle.clear()
        try:
            try:
                loop = asyncio.get_running_loop()
                if len(raw) <= INLINE_HASH_BYTES:
                    ref = self.blobs.reference(raw)
                else:  # hashing megabytes here would hold up every other session
                    ref = await loop.run_in_executor(None, self.blobs.reference, raw)
                if self.segments is not None:
                    ref, stored = self.segments.append(ref, raw)
                else:
                    stored = loop.run_in_executor(None, self.blobs.store, ref, raw)
                event = received_event(session, envelope, ctx, message_id=message_id, blob=ref,
                                       listener="submission" if self.listener == "submission" else "smtp",
                                       ingress_host=self.hostname, answer_by=answer_by)
                # the sink commits the event once its blob is stored; it bounds both by persist_timeout and
                # aborts the event on failure, so it is never delivered behind a 451; the outer bound only
                # guards against a sink that hangs
                async with asyncio.timeout(2 * self.settings.persist_timeout):
                    await self.events.persist(event, stored)
            except Exception as exc:  # broker down, disk full, timeout: the client must retry
                log.warning("message %s not persisted: %s: %s", message_id, type(exc).__name__, exc)
                return self._reject(ctx, "data", "persist", "persist_failed", Replies.PERSIST_FAILED)
            log.info("message %s accepted from [%s] (%d bytes, %d rcpt)", message_id, ip, ref.size,
                     len(envelope.rcpt_tos))
            if pending is None:
                return Replies.queued(message_id)
            return await self._answer_with_verdict(ctx, message_id, pending, wait, answer_by)
        finally:
            if self.verdicts is not None:
                self.verdicts.forget(message_id)
            self._persisting -= 1
            if self._persisting == 0:
                self._idle.set()

    def _verdict_wait(self) -> float:
        """Seconds to wait for the pipeline's verdict on this message (0: answer at once)."""
        if self.verdicts is None or not self.verdicts.ready or self._stopping.is_set():
            return 0.0
        return self.settings.verdict_wait

    async def _answer_with_verdict(self, ctx: CheckContext, message_id: str, pending: Pending, wait: float,
                                   answer_by: float) -> str:
        """554 when the pipeline rejected the message for every recipient in time, else 250.

        A 250 that does not tell the client of every rejection (the wait ran out, or only some
        recipients were rejected) is recorded first (`accepted_early`), so the verdict service
        quarantines those rejections instead of letting the rejected recipients' copies vanish.
        """
        started = time.monotonic()
        await first_of(pending.done, self._stopping, timeout=wait)
        rejection = pending.rejection
        if rejection is not None:
            log.info("message %s refused at DATA: rejected by %s: %s", message_id, rejection.stage, rejection.reason)
            return self._reject(ctx, "data", rejection.stage, f"{rejection.stage}_rejected", refusal_text(rejection),
                                message_id=message_id)
        if pending.done.is_set() and not pending.partly_rejected:
            return Replies.queued(message_id)  # routed or quarantined: accepted either way
        reason = "partial" if pending.done.is_set() else "timeout"
        waited_ms = round((time.monotonic() - started) * 1000, 1)
        try:
            record = AcceptedEarly(message_id=message_id, waited_ms=waited_ms, reason=reason)
            await asyncio.wait_for(self.events.accepted_early(record), max(0.1, answer_by - time.time()))
        except Exception as exc:
            log.warning("message %s: accepted-early record not written (%s: %s); answering 451", message_id,
                        type(exc).__name__, exc)
            return self._reject(ctx, "data", "persist", "verdict_record_failed", Replies.PERSIST_FAILED,
                                message_id=message_id)
        if reason == "partial":
            log.info("message %s: rejected for some recipients only; accepted (their copies are quarantined)",
                     message_id)
        else:
            log.info("message %s: no verdict after %.0f ms; accepted", message_id, waited_ms)
        return Replies.queued(message_id)

    # -- helpers ------------------------------------------------------------------------------

    async def _run(self, ctx: CheckContext, phase: Phase, *args: Any) -> str | None:
        """Run one phase of the chain; record its refusal and its notes; return the refusal."""
        ctx.notes.clear()
        ctx.standing_notes.clear()
        outcome = await self.chain.run(phase, ctx, *args)
        recipient = args[0] if phase == "rcpt" else ""
        for check, result in ctx.notes.items():
            ctx.results[check] = (result, phase)
            if result == SKIPPED_TEMPFAIL:
                ctx.skipped.setdefault(check, phase)
            if check in ctx.standing_notes:  # the session's standing, not the check's finding: once a session
                if ctx.standing_reported != result:
                    ctx.standing_reported = result
                    self._note(ctx, phase, "reputation", result)
                continue
            self._note(ctx, phase, check, result, recipient=recipient)
        if not outcome.refused:
            return None
        decision = outcome.decision
        log.info("%s refused by %s (%s) for [%s]: %s", phase, outcome.check, decision.reason_code, ctx.client_ip,
                 decision.detail)
        return self._reject(ctx, phase, outcome.check, decision.reason_code, decision.reply or "",
                            recipient=recipient)

    def _note(self, ctx: CheckContext, phase: str, check: str, result: str, recipient: str = "") -> None:
        self.events.notify(SmtpCheck(session_id=ctx.session_id, client_ip=ctx.client_ip, phase=phase,  # type: ignore[arg-type]
                                     check=check, result=result, sender=ctx.sender or "", recipient=recipient))

    def _reject(self, ctx: CheckContext, phase: str, check: str, reason_code: str, reply: str,
                recipient: str = "", ip: str = "", message_id: str = "") -> str:
        code, _, rest = reply.partition(" ")
        enhanced, _, text = rest.partition(" ")
        self.events.notify(
            SmtpReject(
                message_id=message_id,
                session_id=ctx.session_id,
                client_ip=ip or ctx.client_ip,
                phase=phase,  # type: ignore[arg-type]
                check=check,
                reason_code=reason_code,
                reply=Reply(code=int(code), enhanced=enhanced, text=text),
                helo=ctx.helo,
                sender=ctx.sender or "",
                recipient=recipient,
            )
        )
        return reply


async def _talks_first(server: IngressSMTP, delay: float) -> bool:
    """Wait `delay` seconds before the banner; True when the client sent something meanwhile."""
    try:
        data = await asyncio.wait_for(server._reader.read(1), delay)
    except TimeoutError:
        return False
    return bool(data)  # b"": the client hung up, which the session loop notices by itself


def _context(server: IngressSMTP) -> CheckContext:
    if server.context is None:  # a handler used without greet (unit tests of single hooks)
        ip, _ = peer(server.session)
        server.context = CheckContext(session_id=new_id(), client_ip=ip)
    return server.context
