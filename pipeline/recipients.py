"""Per-recipient decisions: what one stage's outcome does to the recipients still in play.

A message to several recipients often means different things to each: a group address becomes its
members, one user wants spam quarantined and another tagged, a forward leaves by another route.
`apply_outcome` turns a stage's `Outcome` into a `Fanout`: which recipients were replaced by which
addresses, which were rejected or quarantined (grouped by reason), which were routed where, and which
go on to the next stage; plus the edits so far, each naming the recipients it is for.

Rules, in the order they are applied:

1. `replace`: the recipient gives way to its addresses, in place; an address already in play is not
   added twice (a person in two expanded groups gets one copy). Edits that named the recipient now
   name its addresses. A replacement with no addresses is refused: a recipient never vanishes, it is
   rejected or quarantined with a reason instead.
2. `reject` / `quarantine` (every recipient in play), then `rejected` / `quarantined` (those named).
   A recipient decided twice is a bug of the stage.
3. `routes`: the routed recipients leave the pipeline; each destination's recipients are grouped
   by the edits that apply to them (`copies`), so every copy is rendered with exactly its own edits.

Whatever names a recipient that is not in play raises `ValueError`: the runner dead-letters the
record rather than guess (`PoisonMessage` "bad_outcome").
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from pipeline.stage import Outcome, Work
from schemas.events import Edit, Replacement

__all__ = ["Fanout", "apply_outcome", "copies", "edits_for"]


@dataclass(slots=True)
class Fanout:
    """The recipients after one stage's outcome (see the module docstring)."""

    replacements: list[Replacement] = field(default_factory=list)  # this stage's, stamped with its name
    rejected: dict[str, list[str]] = field(default_factory=dict)  # reason -> recipients
    quarantined: dict[str, list[str]] = field(default_factory=dict)  # reason -> recipients
    routed: dict[str, list[str]] = field(default_factory=dict)  # destination -> recipients
    remaining: list[str] = field(default_factory=list)  # in play for the next stage
    edits: list[Edit] = field(default_factory=list)  # every edit so far, recipients rewritten

    @property
    def decided(self) -> list[str]:
        """Recipients whose way ended here by a rejection or quarantine."""
        return [r for group in (*self.rejected.values(), *self.quarantined.values()) for r in group]


def edits_for(edits: list[Edit], recipient: str) -> list[Edit]:
    """The edits that apply to `recipient` ([] recipients: every recipient)."""
    return [e for e in edits if not e.recipients or recipient in e.recipients]


def _replace(in_play: list[str], edits: list[Edit], replacement: Replacement) -> tuple[list[str], list[Edit]]:
    if replacement.recipient not in in_play:
        raise ValueError(f"replacement of {replacement.recipient!r}, which is not in play")
    if not replacement.into:
        raise ValueError(f"replacement of {replacement.recipient!r} by no address (reject or quarantine it instead)")
    result: list[str] = []
    for address in in_play:
        for new in (replacement.into if address == replacement.recipient else [address]):
            if new not in result:
                result.append(new)
    rewritten = []
    for edit in edits:
        if replacement.recipient in edit.recipients:
            named = [a for r in edit.recipients for a in (replacement.into if r == replacement.recipient else [r])]
            edit = dataclasses.replace(edit, recipients=list(dict.fromkeys(named)))
        rewritten.append(edit)
    return result, rewritten


def _check_named(what: str, named: list[str], in_play: list[str]) -> None:
    stray = [r for r in named if r not in in_play]
    if stray:
        raise ValueError(f"{what} names {', '.join(map(repr, stray))}, not in play ({', '.join(in_play) or 'none'})")


def apply_outcome(work: Work, outcome: Outcome, stage: str) -> Fanout:
    """What `outcome` of `stage` does to `work.recipients` (raises ValueError for a bad outcome)."""
    fan = Fanout()
    in_play = list(dict.fromkeys(work.recipients))
    edits = list(work.edits)
    for replacement in outcome.replace:
        stamped = dataclasses.replace(replacement, stage=stage, into=list(dict.fromkeys(replacement.into)))
        in_play, edits = _replace(in_play, edits, stamped)
        fan.replacements.append(stamped)
    for edit in outcome.edits:
        _check_named(f"an edit ({edit.kind})", edit.recipients, in_play)
    fan.edits = [*edits, *outcome.edits]
    for reason, target in ((outcome.reject, fan.rejected), (outcome.quarantine, fan.quarantined)):
        if reason and in_play and not fan.decided:
            target[reason] = list(in_play)
    for per_recipient, target in ((outcome.rejected, fan.rejected), (outcome.quarantined, fan.quarantined)):
        _check_named("a decision", list(per_recipient), in_play)
        for recipient, reason in per_recipient.items():
            if recipient in fan.decided:
                raise ValueError(f"{recipient!r} is both rejected and quarantined")
            target.setdefault(reason, []).append(recipient)
    decided = set(fan.decided)
    for destination, recipients in outcome.routes.items():  # a recipient decided or routed before is not in play
        _check_named(f"the route to {destination}", recipients, [r for r in in_play if r not in decided])
        fan.routed[destination] = list(dict.fromkeys(recipients))
        decided.update(recipients)
    fan.remaining = [r for r in in_play if r not in decided]
    return fan


def copies(recipients: list[str], edits: list[Edit]) -> list[tuple[list[str], list[Edit]]]:
    """The recipients grouped by the edits that apply to them: one (recipients, edits) per copy."""
    groups: dict[tuple[int, ...], list[str]] = {}
    for recipient in recipients:
        key = tuple(i for i, e in enumerate(edits) if not e.recipients or recipient in e.recipients)
        groups.setdefault(key, []).append(recipient)
    return [(members, [edits[i] for i in key]) for key, members in groups.items()]
