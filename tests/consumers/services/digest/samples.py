"""Quarantine entries for the digest tests: real `quarantined` events folded by the real state."""
from __future__ import annotations

from pipeline.blobstore import FileBlobStore
from pipeline.settings import IngressSettings, KafkaSettings, Settings, TopologySettings
from pipeline.state.quarantine import QuarantineState
from schemas.events import Client, Envelope, HeaderSummary, Quarantined, Received, Result, Verdict
from schemas.ids import new_id

SETTINGS = Settings(topology=TopologySettings(stages=["virus", "attachment", "spam", "route"]),
                    ingress=IngressSettings(hostname="mx.school.test", local_domains=["school.test"]),
                    kafka=KafkaSettings(request_timeout_ms=200))
KEY = b"k" * 32
LENA, ANNA = "lena.mueller@school.test", "anna.schmidt@school.test"
RAW = b"From: eve@spam.test\r\nSubject: x\r\n\r\nbuy\r\n"


def quarantined(blobs: FileBlobStore, rcpts: list[str], *, subject: str = "cheap pills", stage: str = "spam",
                score: float = 9.5, sender: str = "eve@spam.test", raw: bytes = RAW,
                time: str = "2026-12-03T10:00:00.000Z") -> Quarantined:
    message = Received(message_id=new_id(), envelope=Envelope(mail_from=sender, rcpt_to=rcpts),
                       client=Client(ip="192.0.2.1", port=1), blob=blobs.put(raw), headers=HeaderSummary(subject=subject, header_from=f"Eve <{sender}>"))
    result = Result(stage=stage, verdict=Verdict.FAIL, score=score)
    return Quarantined(message_id=message.message_id, stage=stage, reason=f"{stage}: LOTS_OF_MONEY (score {score})",
                       recipients=rcpts, message=message, results=[result], time=time)


def state_with(*events: Quarantined) -> QuarantineState:
    state = QuarantineState.from_settings(SETTINGS)
    for event in events:
        state.apply_event(event)
    return state
