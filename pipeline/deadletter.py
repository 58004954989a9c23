"""Dead letters: a record a consumer cannot handle is kept whole, with the reason, and the consumer goes on.

Mailman's shunt queue: nothing a consumer fails on is dropped, and nothing blocks the records behind
it. `deadletter_event` turns the record into a `deadlettered` event for `poststelle.deadletter`:
its key, its value (as text when it is UTF-8, else base64), where it came from and why. A value too
large to travel inside an event (more than `INLINE_LIMIT` bytes) is written to the blob store and
referenced. `poststelle deadletter replay ID` puts the record back on its source topic
(`pipeline.cli.deadletter`), so a person can fix the cause and let the consumer try again.
"""
from __future__ import annotations

import base64
import logging

import orjson
from aiokafka.structs import ConsumerRecord

from pipeline.blobstore import BlobStore
from schemas.events import Deadlettered

__all__ = ["PoisonMessage", "deadletter_event", "original_value", "INLINE_LIMIT", "MAX_ERROR"]

log = logging.getLogger(__name__)

# bytes of a record's value carried inside the event; larger ones go to the blob store. JSON may write a
# byte as six (\u0000), so 128 KiB stay below the 1 MiB request limit however hostile the bytes
INLINE_LIMIT = 128 * 1024
MAX_ERROR = 2000  # characters of the error text kept


class PoisonMessage(Exception):
    """The record can never be handled by this consumer (undecodable, too deep, looping): dead-letter it."""

    def __init__(self, reason: str, detail: str = "", *, consumer: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason
        self.consumer = consumer  # who could not handle it, when not the hop itself (a stage of a chain)


def _message_id_of(value: bytes) -> str:
    """The `message_id` of a record that is a JSON object, else "" (a dead letter need not be an event)."""
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        return ""
    found = data.get("message_id", "") if isinstance(data, dict) else ""
    return found if isinstance(found, str) else ""


def deadletter_event(record: ConsumerRecord, consumer: str, reason: str, error: str, blobs: BlobStore) -> Deadlettered:
    """The `deadlettered` event for `record`, holding the record whole (blocking when the blob store is used)."""
    value = record.value or b""
    key = (record.key or b"").decode("utf-8", "replace")
    common = dict(message_id=_message_id_of(value), consumer=consumer, source_topic=record.topic,
                  partition=record.partition, offset=record.offset, reason=reason, error=error[:MAX_ERROR], key=key)
    if len(value) > INLINE_LIMIT:
        ref = blobs.put(value)
        return Deadlettered(**common, payload_blob=ref)
    try:
        return Deadlettered(**common, payload=value.decode("utf-8"))
    except UnicodeDecodeError:
        return Deadlettered(**common, payload=base64.b64encode(value).decode("ascii"), payload_encoding="base64")


def original_value(event: Deadlettered, blobs: BlobStore) -> bytes:
    """The dead-lettered record's value, exactly as it was (raises ValueError when only an excerpt survives)."""
    if not event.payload_complete:
        raise ValueError(f"dead letter {event.id} holds only an excerpt of the record (written by an older "
                         "release); it cannot be replayed")
    if event.payload_blob is not None:
        return blobs.get(event.payload_blob)
    if event.payload_encoding == "base64":
        return base64.b64decode(event.payload)
    return event.payload.encode("utf-8")


