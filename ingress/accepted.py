"""What the ingress records about a message it accepts: the trace header it prepends and the `received` event."""
from __future__ import annotations

from aiosmtpd.smtp import Envelope as SmtpEnvelope
from aiosmtpd.smtp import Session

from ingress.checks import CheckContext
from pipeline.mail.trace import received_header, summarize_headers
from schemas.events import BlobRef, Client, Envelope, Received, iso_from_epoch

__all__ = ["trace_header", "received_event", "peer"]


def peer(session: Session) -> tuple[str, int]:
    """The client's address and port."""
    address = session.peer or ("", 0)
    return str(address[0]), int(address[1])


def trace_header(session: Session, envelope: SmtpEnvelope, ctx: CheckContext, message_id: str, by_host: str) -> bytes:
    """The `Received:` field the ingress puts on top of the message (RFC 5321 4.4)."""
    return received_header(helo=ctx.helo, client_ip=peer(session)[0], reverse_name=ctx.reverse_name, by_host=by_host,
                           protocol=_protocol(session, envelope, ctx), message_id=message_id,
                           recipients=list(envelope.rcpt_tos))


def received_event(session: Session, envelope: SmtpEnvelope, ctx: CheckContext, *, message_id: str, blob: BlobRef,
                   listener: str, ingress_host: str, answer_by: float) -> Received:
    """The `received` event of an accepted message, stored as `blob`; `answer_by` 0: no verdict wait."""
    ip, port = peer(session)
    options = [o.upper() for o in envelope.mail_options]
    return Received(
        message_id=message_id,
        envelope=Envelope(mail_from=_sender(envelope), rcpt_to=list(envelope.rcpt_tos), smtputf8=envelope.smtp_utf8,
                          body="8BITMIME" if "BODY=8BITMIME" in options else "7BIT"),
        client=Client(ip=ip, port=port, helo=ctx.helo, reverse_name=ctx.reverse_name,
                      authenticated_as=ctx.authenticated_as, tls=ctx.tls or session.ssl is not None),
        blob=blob,
        headers=summarize_headers(ctx.message_header(envelope.original_content)),
        session_id=ctx.session_id,
        listener=listener,
        ingress_host=ingress_host,
        skipped_checks=ctx.skipped_checks(),
        checks=ctx.check_results(),
        answer_by=iso_from_epoch(answer_by) if answer_by else "",
    )


def _sender(envelope: SmtpEnvelope) -> str:
    """The envelope sender as events carry it: "" for the null sender <>."""
    return "" if envelope.mail_from in (None, "<>") else envelope.mail_from


def _protocol(session: Session, envelope: SmtpEnvelope, ctx: CheckContext) -> str:
    """The `with` keyword of the Received line (RFC 3848, RFC 6531)."""
    if envelope.smtp_utf8:
        base = "UTF8SMTP"
    else:
        base = "ESMTP" if session.extended_smtp else "SMTP"
    if ctx.tls or session.ssl is not None:
        base += "S"
    if ctx.authenticated:
        base += "A"
    return base
