"""The attachment stage: messages per second per core, `process()` in-process, no Kafka.

    .venv/bin/python bench/stage_attachment.py [--messages 5000] [--held-share 0.1] [--seed 1]

Generates realistic messages of 4-50 KiB (a text part, often an HTML alternative, 0-3 attachments:
PDFs, images, office files, zip archives of a few documents; `--held-share` of them carry one
flagged attachment: a blocked extension, a double extension, a space run or a `.js` inside a zip),
stores them in a temporary blob store and runs `AttachmentStage.process()` over them, timed with
`time.process_time()` (the stage's worker thread included: that is CPU time, one message at a time)
and wall-clock. The held messages also write their notice blobs (fsync), which the wall-clock rate
shows.
"""
from __future__ import annotations

import argparse
import asyncio
import email.policy
import io
import random
import sys
import tempfile
import zipfile
from email.message import EmailMessage
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.stagebench import time_stage  # noqa: E402
from consumers.stages.attachment import AttachmentStage  # noqa: E402
from pipeline.blobstore import FileBlobStore  # noqa: E402
from pipeline.cli.components import load_config  # noqa: E402
from pipeline.stage import StageContext, Work  # noqa: E402
from schemas.events import Client, Envelope, HeaderSummary, Received  # noqa: E402
from schemas.ids import new_id  # noqa: E402

WORDS = ("Hallo Elternabend Klassenfahrt Rechnung Termin bitte anbei Unterlagen Schule Zeugnis "
         "Mathematik Hausaufgaben Projekt Woche Ausflug Anmeldung Frist Grüße").split()
FLAGGED = ("Rechnung.pdf            .exe", "a.pdf.exe", "Zahlung.js", "update.scr")


def _text(rng: random.Random, size: int) -> str:
    words, length = [], 0
    while length < size:  # a running length: summing the list each time made generating quadratic
        words.append(rng.choice(WORDS))
        length += len(words[-1]) + 1
    lines = [" ".join(words[i:i + 10]) for i in range(0, len(words), 10)]
    return "\n".join(lines) + "\n"


def _zip(rng: random.Random, names: list[str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in names:
            archive.writestr(name, rng.randbytes(rng.randint(500, 4000)))
    return buffer.getvalue()


def make_message(rng: random.Random, flagged: bool) -> bytes:
    target = rng.randint(4 * 1024, 50 * 1024)
    msg = EmailMessage()
    msg["From"], msg["To"] = "lehrer@ext.test", "max.mustermann@school.test"
    msg["Subject"] = " ".join(rng.choices(WORDS, k=4))
    count = rng.choice((0, 1, 1, 2, 3))
    html = rng.random() < 0.5
    text_size = rng.randint(300, 3000) if count or flagged else target // (2 if html else 1) - 400
    body = _text(rng, text_size)
    msg.set_content(body)
    if html:
        msg.add_alternative(f"<html><body><p>{body}</p></body></html>", subtype="html")
    budget = max(0, target - len(msg.as_bytes()) - (3000 if flagged else 0))
    for i in range(count):
        size = int(budget * 0.72 / count)
        kind = rng.choice(("pdf", "jpg", "docx", "zip"))
        if kind == "zip":
            data, name = _zip(rng, [f"dokument{j}.pdf" for j in range(3)]), f"unterlagen{i}.zip"
        else:
            data, name = rng.randbytes(size), f"anhang {i}.{kind}"
        msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    if flagged:
        name = rng.choice(FLAGGED)
        if name.endswith(".js"):
            msg.add_attachment(_zip(rng, ["rechnung.pdf", name]), maintype="application", subtype="zip",
                               filename="rechnung.zip")
        else:
            msg.add_attachment(rng.randbytes(2000), maintype="application", subtype="octet-stream", filename=name)
    return msg.as_bytes(policy=email.policy.SMTP)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--held-share", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    settings = load_config(None, environ={"POSTSTELLE_TOPOLOGY__STAGES": "attachment,route",
                                            "POSTSTELLE_INGRESS__LOCAL_DOMAINS": '["school.test"]'})
    with tempfile.TemporaryDirectory() as tmp:
        blobs = FileBlobStore(Path(tmp))
        stage = AttachmentStage(settings.stage_settings("attachment"), StageContext(settings=settings, blobs=blobs))
        works, sizes = [], []
        for _ in range(args.messages):
            raw = make_message(rng, rng.random() < args.held_share)
            sizes.append(len(raw))
            works.append(Work(message=Received(
                message_id=new_id(), envelope=Envelope(mail_from="lehrer@ext.test", rcpt_to=["max.mustermann@school.test"]),
                client=Client(ip="192.0.2.7", port=1), blob=blobs.put(raw), headers=HeaderSummary(subject="x"))))

        cpu, wall, counts = asyncio.run(time_stage(stage, works, lambda outcome: "held" if outcome.held else "passed"))
        held = counts["held"]
    print(f"attachment stage: {args.messages} messages, {sum(sizes) / len(sizes) / 1024:.1f} KiB average "
          f"({min(sizes) / 1024:.1f}-{max(sizes) / 1024:.1f} KiB), {held} held")
    print(f"  {args.messages / cpu:,.0f} messages/s per core (CPU time {cpu:.2f} s)")
    print(f"  {args.messages / wall:,.0f} messages/s wall-clock (one at a time, notice blobs fsynced)")


if __name__ == "__main__":
    main()
