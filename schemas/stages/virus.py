"""Details the virus stage records in its result."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["VirusDetails"]


@dataclass(frozen=True, slots=True, kw_only=True)
class VirusDetails:
    result: str  # clean | infected | limit_exceeded
    signature: str = ""  # what clamd found, or the limit that stopped the scan
    scanner: str = ""  # "clamd <address>"
    reply: str = ""  # clamd's answer, or why the message was not sent to it
    size: int = 0  # bytes of the message
