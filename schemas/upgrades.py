"""Upgrades of older event versions, one step each: (type, version) -> the decoded JSON one version up.

`schemas.events.decode_event` applies them in turn, so a consumer always sees the current shape of
an event written by an earlier release (see the version table in schemas/events.py).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["UPGRADES"]


def _stage_result_v1(data: dict[str, Any]) -> dict[str, Any]:
    """v1 passed every envelope recipient on; edits applied to all of them."""
    envelope = data.get("message", {}).get("envelope", {}) if isinstance(data.get("message"), dict) else {}
    return {**data, "recipients": envelope.get("rcpt_to", []) if isinstance(envelope, dict) else []}


def _deadlettered_v1(data: dict[str, Any]) -> dict[str, Any]:
    """v1 kept at most 4,096 bytes of the record as text (undecodable bytes replaced): a shorter
    payload without replacement characters is the whole record."""
    payload = data.get("payload", "")
    complete = isinstance(payload, str) and len(payload.encode("utf-8")) < 4096 and "\ufffd" not in payload
    return {**data, "payload_complete": complete}


UPGRADES: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {
    ("stage_result", 1): _stage_result_v1,
    ("outcome", 1): dict,  # v2 only adds a disposition
    ("deadlettered", 1): _deadlettered_v1,
}
