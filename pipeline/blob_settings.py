"""`[blobs]`: how long the raw messages in `<home>/blobs` are kept.

Kept apart from `pipeline.settings` (which imports it into `Settings`). The digest service's cleanup
(`consumers.services.digest.service.Cleanup`) deletes a blob once it was last stored `retention` ago,
unless a quarantine entry refers to it (those go with their entries) or a deferred delivery still
needs it. `retention` must exceed `delivery.lifetime`: a message still being retried keeps its bytes.
"""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.settings_base import ConfigError, parse_duration

__all__ = ["BlobSettings", "KEEP_FOREVER"]

KEEP_FOREVER = "never"  # the value of `retention` that turns the deletion off
MARGIN = 86_400.0  # seconds `retention` must exceed `delivery.lifetime` by


@dataclass(frozen=True, slots=True)
class BlobSettings:
    retention: str = "30d"  # after this a blob nothing needs any more is deleted; "never": kept
    # the ingress appends messages to segment files (`pipeline.blobsegments`), one fdatasync per
    # group; false: a file each (an inode and two fsyncs per message)
    segments: bool = True

    def __post_init__(self) -> None:
        if self.retention != KEEP_FOREVER:
            parse_duration("blobs.retention", self.retention)

    @property
    def retention_seconds(self) -> float | None:
        """Seconds a blob is kept after it was last stored; None: kept for ever."""
        return None if self.retention == KEEP_FOREVER else parse_duration("blobs.retention", self.retention)

    def check_against(self, delivery_lifetime: float) -> None:
        """Refuse a retention that could delete the bytes of a delivery that is still being retried."""
        keep = self.retention_seconds
        if keep is not None and keep < delivery_lifetime + MARGIN:
            raise ConfigError(f"blobs.retention: {self.retention} is too short: deferred deliveries are retried "
                              f"for delivery.lifetime and still need their message; use at least that plus a day "
                              f"(or \"{KEEP_FOREVER}\")")
