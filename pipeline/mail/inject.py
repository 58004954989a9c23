"""Messages the gateway itself sends (DSNs, notices): stored, then injected as a `received` event."""
from __future__ import annotations

from pipeline.blobstore import BlobStore
from pipeline.mail.headers import parse_header
from pipeline.mail.trace import summarize_headers
from schemas.events import Client, Envelope, Received

__all__ = ["inject_message", "sent_by_gateway", "LOCAL_CLIENT_IP", "DSN_LISTENER", "NOTICE_LISTENER",
           "DIGEST_LISTENER", "GATEWAY_LISTENERS"]

LOCAL_CLIENT_IP = "127.0.0.1"
DSN_LISTENER = "dsn"  # the listener of a DSN's `received` event
NOTICE_LISTENER = "notice"  # an attachment stage's notice of a held part
DIGEST_LISTENER = "digest"  # a quarantine digest (consumers.services.digest)
# messages the gateway writes itself: no outside client can set a `received` event's listener, so
# the stages may trust it. A digest quotes spam subjects and senders; scored, tagged, held or refused
# like outside mail, it would never reach the user it is for.
GATEWAY_LISTENERS = frozenset({DSN_LISTENER, NOTICE_LISTENER, DIGEST_LISTENER})


def sent_by_gateway(received: Received) -> bool:
    """Whether the gateway itself wrote this message (a DSN, a notice, a digest): the spam stage does not
    hold or tag it, the blocklist stage does not refuse it, the auth stage does not enforce DMARC on it."""
    return received.listener in GATEWAY_LISTENERS


def inject_message(blobs: BlobStore, raw: bytes, *, message_id: str, event_id: str, mail_from: str,
                   rcpt_to: list[str], hostname: str, listener: str) -> Received:
    """Store a message the gateway itself sends (a DSN, a notice) and return its `received` event.

    Produced to the received topic, the event sends the message through the whole pipeline like any
    other. Blocking (blob store I/O); raises OSError when the blob store cannot be written.
    """
    ref = blobs.put(raw)
    return Received(
        id=event_id,
        message_id=message_id,
        envelope=Envelope(mail_from=mail_from, rcpt_to=list(rcpt_to),
                          smtputf8=not all(r.isascii() for r in rcpt_to),
                          body="7BIT" if raw.isascii() else "8BITMIME"),
        client=Client(ip=LOCAL_CLIENT_IP, port=0, helo=hostname),
        blob=ref,
        headers=summarize_headers(parse_header(raw)),
        listener=listener,
        ingress_host=hostname,
    )
