"""What the ingress handler needs from outside, as protocols: where events go, who checks passwords."""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol

from schemas.events import AcceptedEarly, Event, Received

__all__ = ["EventSink", "Authenticator"]


class EventSink(Protocol):
    """Where the handler sends events (the Kafka producer in production, a list in unit tests)."""

    def arriving(self) -> AbstractContextManager[None]:
        """Entered while a message's blob is written, left right before its `persist` (the group commit
        may wait for messages on their way)."""

    async def persist(self, event: Received) -> None:
        """Return only once `event` is durable; raise otherwise, and then it must never surface
        (within `IngressSettings.persist_timeout`)."""

    def notify(self, event: Event) -> None:
        """Best effort: session events for analytics, never delaying or failing SMTP."""

    async def accepted_early(self, event: AcceptedEarly) -> None:
        """Return only once `event` is durable (the ingress answers 250 before the verdict)."""


class Authenticator(Protocol):
    """Verifies AUTH credentials (the LDAP directory in production)."""

    async def authenticate(self, login: str, password: str) -> Any:
        """The account (with `.uid`, `.mail`, `.addresses`) or None; raises when it cannot tell."""
