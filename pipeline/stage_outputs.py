"""One stage's outcome for one message, as the events it writes and the next stage's input.

Shared by the stage runner (`pipeline.runner`: one stage per process and transaction) and the chain
runner (`pipeline.chain`: consecutive stages in one), so a stage writes exactly the same events
either way. `stage_step` applies the outcome (`pipeline.recipients`) and returns:

- `outcome` `replaced` for each recipient the stage replaced by others (first, so a waiting ingress
  follows them);
- `rejected` / `quarantined` events, one per reason, for the recipients decided here, each with its
  `outcome`;
- `stage_result` to the stage's `checked.<stage>` topic with the recipients left in play (none when
  the stage decided for all of them; routed ones leave too), every edit so far and every replacement
  so far, and the earlier stages' results (`history`), which the next stage reads from it. In a chain
  (`chained_to`, the next stage, which the chain runs on `next` in the same transaction) no stage
  reads the record: it is marked for the next stage (`CHAINED_HEADER`, which skips it) and carries no
  history, since each earlier stage's own `stage_result` has its result
  (docs/decisions/0008-history-where-read.md);
- `held` events (parts held back) to the quarantine topic and injected messages (notices) to the
  received topic;
- for a routing stage, one `routed` event per destination and set of edits (`recipients.copies`),
  and an `outcome` `routed` for them;

and `next`: the `Work` the next stage sees, exactly what it would decode from that `stage_result`
(None when no recipient is left in play).
"""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.bus import Topics
from pipeline.deadletter import PoisonMessage
from pipeline.hop import Output
from pipeline.recipients import Fanout, apply_outcome, copies
from pipeline.stage import Outcome, Work
from schemas.events import MessageOutcome, Quarantined, Rejected, Result, Routed, StageResult

__all__ = ["StageStep", "stage_step", "CHAINED_HEADER"]

# on a stage_result a chain wrote: the next stage, which the chain already ran on the message
CHAINED_HEADER = "poststelle-chained-to"


@dataclass(frozen=True, slots=True)
class StageStep:
    """What one stage did to one message: its events, and the next stage's input (None: nobody left)."""

    outputs: list[Output]
    next: Work | None


def stage_step(topics: Topics, stage: str, work: Work, outcome: Outcome, duration_ms: float,
               chained_to: str = "") -> StageStep:
    """The events of `stage`'s `outcome` for `work` (see the module docstring); `chained_to`: the
    stage a chain runs next on the message. A bad outcome (naming a recipient not in play) is a
    `PoisonMessage`."""
    try:
        fan = apply_outcome(work, outcome, stage)
    except ValueError as exc:
        raise PoisonMessage("bad_outcome", f"stage {stage}: {exc}", consumer=stage) from None
    result = Result(stage=stage, verdict=outcome.verdict, score=outcome.score, details=outcome.details,
                    duration_ms=round(duration_ms, 3))
    write = _Writer(topics, stage, work, fan, result)
    goes_on = bool(fan.remaining or fan.routed)  # held parts and notices only for a message that goes on
    outputs = [*write.replaced(), *write.decided(), *write.passed(chained_to),
               *(Output(topics.quarantine, write.key, held) for held in outcome.held if goes_on),
               *(Output(topics.received, new.message_id.encode(), new) for new in outcome.inject if goes_on),
               *write.routed()]
    following = None
    if fan.remaining:
        following = Work(message=work.message, history=[*work.history, result], edits=list(fan.edits),
                         recipients=list(fan.remaining), replacements=[*work.replacements, *fan.replacements])
    return StageStep(outputs, following)


@dataclass(frozen=True, slots=True)
class _Writer:
    topics: Topics
    stage: str
    work: Work
    fan: Fanout
    result: Result

    @property
    def key(self) -> bytes:
        return self.work.message.message_id.encode()

    @property
    def results(self) -> list[Result]:
        return [*self.work.history, self.result]

    @property
    def replacements(self):
        return [*self.work.replacements, *self.fan.replacements]

    def outcome(self, disposition: str, recipients: list[str], reason: str = "",
                into: list[str] | None = None) -> Output:
        """The small outcome event a waiting ingress reads (see `ingress.verdicts`)."""
        event = MessageOutcome(message_id=self.work.message.message_id, stage=self.stage,
                               disposition=disposition, recipients=recipients, reason=reason,  # type: ignore[arg-type]
                               into=into or [])
        return Output(self.topics.outcomes, self.key, event)

    def replaced(self) -> list[Output]:
        return [self.outcome("replaced", [r.recipient], r.reason, r.into) for r in self.fan.replacements]

    def decided(self) -> list[Output]:
        outputs: list[Output] = []
        message = self.work.message
        for reason, recipients in self.fan.rejected.items():
            outputs.append(Output(self.topics.rejected, self.key, Rejected(
                message_id=message.message_id, stage=self.stage, reason=reason, recipients=recipients,
                message=message, results=self.results, replacements=self.replacements)))
            outputs.append(self.outcome("rejected", recipients, reason))
        for reason, recipients in self.fan.quarantined.items():
            outputs.append(Output(self.topics.quarantine, self.key, Quarantined(
                message_id=message.message_id, stage=self.stage, reason=reason, recipients=recipients,
                message=message, results=self.results, replacements=self.replacements, edits=self.fan.edits)))
            outputs.append(self.outcome("quarantined", recipients, reason))
        return outputs

    def passed(self, chained_to: str) -> list[Output]:
        """The stage_result, unless every recipient's way ended here by a rejection or quarantine;
        marked and without history when a chain runs `chained_to` on the message itself."""
        if not (self.fan.remaining or self.fan.routed):
            return []
        passed = StageResult(message_id=self.work.message.message_id, result=self.result, message=self.work.message,
                             recipients=self.fan.remaining, history=[] if chained_to else list(self.work.history),
                             edits=self.fan.edits, replacements=self.replacements)
        headers = ((CHAINED_HEADER, chained_to.encode()),) if chained_to else ()
        return [Output(self.topics.checked(self.stage), self.key, passed, headers)]

    def routed(self) -> list[Output]:
        outputs: list[Output] = []
        for destination, recipients in self.fan.routed.items():
            for members, edits in copies(recipients, self.fan.edits):
                routed = Routed(message_id=self.work.message.message_id, destination=destination, recipients=members,
                                message=self.work.message, results=self.results, edits=edits,
                                replacements=self.replacements)
                outputs.append(Output(self.topics.routed(destination), self.key, routed))
        routed_recipients = [r for recipients in self.fan.routed.values() for r in recipients]
        if routed_recipients:
            outputs.append(self.outcome("routed", routed_recipients))
        return outputs
