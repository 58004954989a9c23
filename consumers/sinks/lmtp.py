"""LMTP sink: delivers `routed` events for the local mailbox server (Dovecot), recipient by recipient.

LMTP (RFC 2033) answers per recipient after DATA, so a full mailbox defers only its own recipient.
The delivery logic (ledger, events, transactions) is `consumers.sinks.delivery.DeliverySink`.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable

from consumers.sinks.delivery import DeliverySink
from consumers.sinks.transport import SmtpClientTransport
from pipeline.blobstore import FileBlobStore
from pipeline.settings import Settings

__all__ = ["run_lmtp_sink"]

DESTINATION = "lmtp"


async def run_lmtp_sink(settings: Settings, stop: asyncio.Event, on_ready: Callable[[], None] | None = None,
                        instance: str = "0") -> DeliverySink:
    s = settings.sinks.lmtp
    transport = SmtpClientTransport(s.host, s.port, lmtp=True, helo_name=s.lhlo_name, timeout=s.timeout)
    sink = DeliverySink(settings, DESTINATION, transport, FileBlobStore(settings.home / "blobs"),
                        inflight=s.inflight, instance=instance)
    await sink.run(stop, on_ready)
    return sink
