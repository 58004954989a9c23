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
from pathlib import Path

from pipeline.mail.reader import message_reader
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
        self.reader = message_reader(context.blobs, context.settings.message)  # as a site's own stage would
        self.slept: dict[str, int] = {}

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def process(self, work: Work) -> Outcome:
        header = (await self.reader.parsed(work.message.blob, content=False)).header
        told = header.first("X-Probe-Raise")
        if told and not Path(told.strip()).exists():
            raise RuntimeError("probe: told to fail")
        if header.first("X-Probe-Sleep"):
            seconds, times = header.first("X-Probe-Sleep").split()
            if self.slept.get(work.message.message_id, 0) < int(times):
                self.slept[work.message.message_id] = self.slept.get(work.message.message_id, 0) + 1
                await asyncio.sleep(float(seconds))
        replace = []
        for value in (f.value for f in header.all("X-Probe-Expand")):
            original, _, into = value.partition("=")
            replace.append(Replacement(recipient=original.strip(), into=_addresses(into), reason="probe: expanded"))
        edits = []
        for value in (f.value for f in header.all("X-Probe-Tag")):
            recipient, _, tag = value.partition("=")
            edits.append(Edit(stage=self.name, kind="subject_tag", value=tag.strip(), recipients=[recipient.strip()]))
        quarantined = {r: "probe: quarantined for test" for r in _addresses(header.first("X-Probe-Quarantine"))}
        rejected = {r: "probe: rejected for test" for r in _addresses(header.first("X-Probe-Reject"))}
        return Outcome(verdict=Verdict.PASS, replace=replace, edits=edits, quarantined=quarantined, rejected=rejected)
