"""What the ingress handler needs from outside, as protocols: where events go, who checks passwords."""
from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol

from schemas.events import AcceptedEarly, Event, Received

__all__ = ["EventSink", "Authenticator"]


class EventSink(Protocol):
    """Where the handler sends events (the Kafka producer in production, a list in unit tests)."""

    async def persist(self, event: Received, stored: Awaitable[None]) -> None:
        """Return only once `event` is durable, which it may be only after `stored` (its blob being
        written) is done; raise otherwise, and then it must never surface (within
        `IngressSettings.persist_timeout`)."""

    def notify(self, event: Event) -> None:
        """Best effort: session events for analytics, never delaying or failing SMTP."""

    async def accepted_early(self, event: AcceptedEarly) -> None:
        """Return only once `event` is durable (the ingress answers 250 before the verdict)."""


class Authenticator(Protocol):
    """Verifies AUTH credentials (the LDAP directory in production)."""

    async def authenticate(self, login: str, password: str) -> Any:
        """The account (with `.uid`, `.mail`, `.addresses`) or None; raises when it cannot tell."""
