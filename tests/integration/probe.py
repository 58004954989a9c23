"""A test stage for the integration stack: does to a message what its X-Probe-* header fields say.

Loaded into the real stack through `topology.stage_modules` (tests/integration/conftest.py), as a
site's own stage would be, and placed before `route`. A message without X-Probe fields passes
untouched, so every other test's mail goes through it unchanged.

    X-Probe-Quarantine: a@school.test, ...   quarantine these recipients ("probe: quarantined for test")
    X-Probe-Reject: a@school.test, ...       reject these recipients
    X-Probe-Expand: list@school.test = a@school.test, b@school.test
                                             replace the first address by the others
    X-Probe-Tag: a@school.test = [TAG]       a subject tag for that recipient only
    X-Probe-Raise: PATH                      raise (a stage bug) until the file PATH exists
    X-Probe-Sleep: SECONDS TIMES             sleep that long the first TIMES times this process sees the message
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path

from pipeline.registry import register
from pipeline.stage import Outcome, StageContext, Work
from schemas.events import Edit, Replacement, Verdict

__all__ = ["ProbeStage"]


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    pass


def _addresses(value: str) -> list[str]:
    return [a.strip() for a in value.split(",") if a.strip()]


@register
class ProbeStage:
    name = "probe"
    description = "Test stage: decides per recipient as the message's X-Probe-* header fields say"
    Settings = ProbeSettings

    def __init__(self, settings: ProbeSettings, context: StageContext) -> None:
        self.blobs = context.blobs
        self.slept: dict[str, int] = {}

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def process(self, work: Work) -> Outcome:
        raw = await asyncio.to_thread(self.blobs.get, work.message.blob)
        fields = BytesHeaderParser(policy=compat32).parsebytes(raw)
        if "X-Probe-Raise" in fields and not Path(str(fields["X-Probe-Raise"]).strip()).exists():
            raise RuntimeError("probe: told to fail")
        if "X-Probe-Sleep" in fields:
            seconds, times = str(fields["X-Probe-Sleep"]).split()
            if self.slept.get(work.message.message_id, 0) < int(times):
                self.slept[work.message.message_id] = self.slept.get(work.message.message_id, 0) + 1
                await asyncio.sleep(float(seconds))
        replace = []
        for value in fields.get_all("X-Probe-Expand") or []:
            original, _, into = str(value).partition("=")
            replace.append(Replacement(recipient=original.strip(), into=_addresses(into), reason="probe: expanded"))
        edits = []
        for value in fields.get_all("X-Probe-Tag") or []:
            recipient, _, tag = str(value).partition("=")
            edits.append(Edit(stage=self.name, kind="subject_tag", value=tag.strip(), recipients=[recipient.strip()]))
        quarantined = {r: "probe: quarantined for test" for r in _addresses(str(fields.get("X-Probe-Quarantine", "")))}
        rejected = {r: "probe: rejected for test" for r in _addresses(str(fields.get("X-Probe-Reject", "")))}
        return Outcome(verdict=Verdict.PASS, replace=replace, edits=edits, quarantined=quarantined, rejected=rejected)
