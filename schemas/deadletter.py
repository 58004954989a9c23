"""What happens to a record a consumer could not handle: kept whole on the dead-letter topic, and put
back by `poststelle deadletter replay` (`pipeline/deadletter.py`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from schemas.base import Event
from schemas.parts import BlobRef

__all__ = ["Deadlettered", "DeadletterReplayed"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Deadlettered(Event):
    """A record a consumer could not handle (undecodable, too deep, or the consumer failed on it).

    The whole record is kept, so `poststelle deadletter replay` can put it back on its topic once the
    cause is fixed: its value as text (`payload_encoding` "utf-8") or base64, or, when it would make
    the event too large, stored in the blob store (`payload_blob`).
    """

    type: Literal["deadlettered"] = "deadlettered"
    schema_version: int = 2
    consumer: str  # the consumer group's name: a stage, "sink.lmtp", "retry", "verdict", ...
    source_topic: str
    partition: int
    offset: int
    reason: str  # undecodable | too_deep | too_large | looping | exception | timeout | blob_missing | ...
    error: str
    key: str = ""  # the record's key (the message id, normally)
    payload: str = ""
    payload_encoding: Literal["utf-8", "base64"] = "utf-8"
    payload_blob: BlobRef | None = None  # the value, when it was too large to carry here
    payload_complete: bool = True  # False: only an excerpt survives (a v1 event), it cannot be replayed


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadletterReplayed(Event):
    """`poststelle deadletter replay` put a dead-lettered record back on its source topic."""

    type: Literal["deadletter_replayed"] = "deadletter_replayed"
    deadletter_id: str  # the id of the `deadlettered` event
    source_topic: str
    partition: int = -1  # where the record went back to
    offset: int = -1
