"""Details the attachment stage records in its result."""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["AttachmentDetails", "HeldPartDetails"]


@dataclass(frozen=True, slots=True, kw_only=True)
class HeldPartDetails:
    part: str  # MIME part number
    filename: str  # decoded, control characters escaped
    content_type: str
    reasons: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class AttachmentDetails:
    parts: int = 0  # MIME entities walked
    named: int = 0  # leaves with a file name (attachments and named inline parts)
    archives: int = 0  # zip archives listed
    held: list[HeldPartDetails] = field(default_factory=list)
    limit: str = ""  # why the walk stopped (too_deep, too_many_parts), when it did
