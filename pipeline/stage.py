"""The stage contract: what a check sees, what it returns, how it signals trouble.

A stage is a class with a `name`, a `description`, a `Settings` dataclass (its `[stages.<name>]`
config section) and an async `process(work) -> Outcome`. The runner does all Kafka work; a stage
only looks at a message and decides. Stages never change the stored message: they return `edits`
for the delivery sink to apply.

Raising `TemporaryFailure` (or letting a `TimeoutError`/`ConnectionError` escape) means "try this
message again later": the runner retries it with backoff and never skips it (Haraka: a timeout is a
temporary failure). Raising `PoisonMessage`, or any other exception, moves the event to the
dead-letter topic with the reason, and the stage goes on with the next one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from pipeline.blobstore import BlobStore
from pipeline.settings import Settings
from schemas.events import Edit, Held, Received, Result, Verdict

__all__ = ["Work", "Outcome", "Stage", "StageContext", "TemporaryFailure", "PoisonMessage"]


class TemporaryFailure(Exception):
    """The stage cannot decide now (scanner down, DNS timeout): retry the same message later."""


class PoisonMessage(Exception):
    """The message can never be processed by this stage (too deep, corrupt): dead-letter it."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Work:
    """What a stage sees: the accepted message and what earlier stages recorded."""

    message: Received
    history: list[Result] = field(default_factory=list)
    edits: list[Edit] = field(default_factory=list)

    def result_of(self, stage: str) -> Result | None:
        return next((r for r in self.history if r.stage == stage), None)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One stage's decision for one message.

    Without `reject`, `quarantine` or `routes`, the message goes on to the next stage.
    """

    verdict: Verdict
    score: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    edits: list[Edit] = field(default_factory=list)
    reject: str = ""  # reason: terminal, the message is refused for all recipients
    quarantine: str = ""  # reason: terminal, held for a person
    routes: dict[str, list[str]] = field(default_factory=dict)  # destination -> recipients
    # with a passing outcome only: parts held back (to the quarantine topic), and new messages the
    # stage injects into the pipeline (to the received topic, like DSNs; their blobs already stored)
    held: list[Held] = field(default_factory=list)
    inject: list[Received] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class StageContext:
    settings: Settings
    blobs: BlobStore


class Stage(Protocol):
    name: ClassVar[str]
    description: ClassVar[str]
    Settings: ClassVar[type]

    def __init__(self, settings: Any, context: StageContext) -> None: ...

    async def start(self) -> None: ...

    async def process(self, work: Work) -> Outcome: ...

    async def close(self) -> None: ...
