"""The stage contract: what a check sees, what it returns, how it signals trouble.

A stage is a class with a `name`, a `description`, a `Settings` dataclass (its `[stages.<name>]`
config section) and an async `process(work) -> Outcome`. The runner does all Kafka work; a stage
only looks at a message and decides. Stages never change the stored message: they return `edits`
for the delivery sink to apply.

**Per recipient.** `work.recipients` are the recipients still in play. An outcome decides for all
of them (`reject`, `quarantine`), or for some (`rejected`, `quarantined`: recipient → reason), may
replace a recipient by others (`replace`: a group expanded, an alias resolved), and may name the
recipients an edit is for (`Edit.recipients`, default: all). What is neither decided nor routed goes
on to the next stage (`pipeline.recipients` applies an outcome).

Raising `TemporaryFailure` (or letting a `TimeoutError`/`ConnectionError` escape, or taking longer
than the stage's timeout) means "try this message again later": the runner retries it with backoff
and never skips it (Haraka: a timeout is a temporary failure). Raising `PoisonMessage`, or any other
exception, moves the record whole to the dead-letter topic with the reason, and the stage goes on
with the next one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from pipeline.blobstore import BlobStore
from pipeline.deadletter import PoisonMessage
from pipeline.settings import Settings
from schemas.events import Edit, Held, Received, Replacement, Result, Verdict

__all__ = ["Work", "Outcome", "Stage", "StageContext", "TemporaryFailure", "PoisonMessage"]


class TemporaryFailure(Exception):
    """The stage cannot decide now (scanner down, DNS timeout): retry the same message later."""


@dataclass(frozen=True, slots=True)
class Work:
    """What a stage sees: the accepted message, the recipients still in play, what earlier stages recorded."""

    message: Received
    history: list[Result] = field(default_factory=list)
    edits: list[Edit] = field(default_factory=list)
    recipients: list[str] = None  # type: ignore[assignment]  # None: every envelope recipient
    replacements: list[Replacement] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.recipients is None:
            object.__setattr__(self, "recipients", list(self.message.envelope.rcpt_to))

    def result_of(self, stage: str) -> Result | None:
        return next((r for r in self.history if r.stage == stage), None)

    def edits_for(self, recipient: str) -> list[Edit]:
        """The edits so far that apply to `recipient`."""
        return [e for e in self.edits if not e.recipients or recipient in e.recipients]


@dataclass(frozen=True, slots=True)
class Outcome:
    """One stage's decision for one message.

    Recipients that no field decides for go on to the next stage. Applied in this order: `replace`,
    then the decisions (`reject`/`quarantine` for every recipient in play, `rejected`/`quarantined`
    for those named), then `routes`. Naming a recipient that is not in play is a bug of the stage
    (the record is dead-lettered).
    """

    verdict: Verdict
    score: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    edits: list[Edit] = field(default_factory=list)  # Edit.recipients: [] = every recipient in play
    reject: str = ""  # reason: refused for every recipient in play
    quarantine: str = ""  # reason: held for a person, every recipient in play
    rejected: dict[str, str] = field(default_factory=dict)  # recipient -> reason: refused for these
    quarantined: dict[str, str] = field(default_factory=dict)  # recipient -> reason: held for these
    replace: list[Replacement] = field(default_factory=list)  # a recipient becomes others (stage: filled in)
    routes: dict[str, list[str]] = field(default_factory=dict)  # destination -> recipients
    # parts held back (to the quarantine topic), and new messages the stage injects into the pipeline
    # (to the received topic, like DSNs; their blobs already stored)
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
