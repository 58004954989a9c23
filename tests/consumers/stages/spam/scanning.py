"""Messages and contexts for the spam rule tests: a raw message becomes the ScanContext the stage builds."""
from __future__ import annotations

import hashlib
from pathlib import Path

from consumers.stages.spam.context import ScanContext
from consumers.stages.spam.rules import RuleSet
from pipeline.mail.message import parse_message
from schemas.events import BlobRef, Client, Envelope, Received, Result, Verdict

RECEIVED_TIME = "2025-06-02T10:00:00.000Z"


def message(subject: str = "Meeting notes", body: str = "Hello Max,\r\n\r\nthe notes are attached.\r\n",
            *, headers: str = "", content_type: str = "text/plain; charset=utf-8",
            sender: str = "Erika Musterfrau <erika@good.test>", to: str = "max.mustermann@school.test",
            date: str = "Mon, 02 Jun 2025 11:58:00 +0200", message_id: str = "<a1b2c3@good.test>") -> bytes:
    lines = [f"From: {sender}", f"To: {to}", f"Subject: {subject}", f"Date: {date}", f"Message-ID: {message_id}",
             "MIME-Version: 1.0", f"Content-Type: {content_type}"]
    lines = [line for line in lines if not line.endswith(": ")]
    head = "\r\n".join(lines) + "\r\n" + (headers.replace("\n", "\r\n") if headers else "")
    return (head + "\r\n" + body).encode("utf-8")


def received(raw: bytes = b"", *, ip: str = "198.51.100.7", helo: str = "mx.good.test", reverse_name: str = "",
             authenticated_as: str = "", checks: dict[str, str] | None = None, mail_from: str = "erika@good.test",
             rcpt_to: tuple[str, ...] = ("max.mustermann@school.test",)) -> Received:
    return Received(message_id="01J0000000000000000000SPAM", time=RECEIVED_TIME,
                    envelope=Envelope(mail_from=mail_from, rcpt_to=list(rcpt_to)),
                    client=Client(ip=ip, port=40000, helo=helo, reverse_name=reverse_name,
                                  authenticated_as=authenticated_as),
                    blob=BlobRef(sha256=hashlib.sha256(raw).hexdigest(), size=len(raw)), checks=dict(checks or {}))


def context(raw: bytes, *, history: tuple[Result, ...] = (), bayes: float | None = None, **client) -> ScanContext:
    return ScanContext(message=parse_message(raw), received=received(raw, **client), history=history, bayes=bayes)


def result(stage: str, details: dict, verdict: Verdict = Verdict.PASS) -> Result:
    return Result(stage=stage, verdict=verdict, details=details)


def rules(tmp_path: Path, text: str, name: str = "test.cf") -> RuleSet:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return RuleSet.load([path])


def fired(ruleset: RuleSet, ctx: ScanContext) -> list[str]:
    return [hit.name for hit in ruleset.evaluate(ctx)]
