"""auth stage: messages per second per core, DNS cache cold and warm, against a real NSD.

    .venv/bin/python bench/stage_auth.py [--messages 1000] [--nameserver 127.0.0.1 --port PORT] [--seed 1]

Without --port the bench starts its own NSD with deploy/local/dns (as the unit tests do). It
generates `--messages` realistic messages of 4-50 KiB (text/plain + HTML alternative, 10 % with a
base64 attachment): 55 % signed by good.test (RSA-2048, relaxed/simple), 10 % by signed.test
(ed25519), 10 % signed and then altered in transit (dkim=fail), 25 % unsigned, from clients and
MAIL FROM domains across the test zone's SPF records (include chains, a/mx, redirect, fail). Then
`AuthStage.process()` runs over all of them, one at a time, twice:

  cold  a resolver without cache: every message pays all its lookups (SPF, DKIM key, DMARC)
  warm  the default cache (after one pass to fill it): lookups are answered in process

and prints events/s per core (`time.process_time()`, one thread, so one core) and wall-clock
events/s (which includes waiting on NSD over loopback).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import random
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.stagebench import time_stage  # noqa: E402
from consumers.stages.auth import AuthSettings, AuthStage  # noqa: E402
from pipeline.blobstore import FileBlobStore  # noqa: E402
from pipeline.settings import DnsSettings, Settings  # noqa: E402
from pipeline.stage import StageContext, Work  # noqa: E402
from schemas.events import Client, Envelope, Received  # noqa: E402
from tests.consumers.stages.authn.fixtures import sign  # noqa: E402

WORDS = ("Elternabend Klassenfahrt Zeugnis Stundenplan Mensa Sporttag Hausaufgaben Vertretung Termin "
         "Anmeldung Ausflug Bibliothek Schulhof Projektwoche Lehrerkonferenz Bitte Rückmeldung").split()
# (client ip, MAIL FROM domain, From domain, how it is signed)
PROFILES = [
    (0.40, "127.0.2.10", "good.test", "good.test", "rsa"),
    (0.15, "127.0.2.20", "signed.test", "good.test", "rsa"),  # softfail SPF, DKIM aligned
    (0.10, "127.0.2.10", "signed.test", "signed.test", "ed25519"),
    (0.10, "127.0.2.10", "good.test", "good.test", "tampered"),
    (0.10, "127.0.2.60", "spf-a.test", "spf-a.test", "none"),
    (0.05, "127.0.2.10", "spf-redirect.test", "ext.test", "none"),
    (0.05, "127.0.2.20", "good.test", "good.test", "none"),  # DMARC reject
    (0.05, "127.0.2.30", "quarantine.test", "quarantine.test", "none"),
]


def text(rng: random.Random, size: int) -> str:
    lines, total = [], 0
    while total < size:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 12)))
        lines.append(line)
        total += len(line) + 2
    return "\r\n".join(lines) + "\r\n"


def make_message(rng: random.Random, i: int, from_domain: str) -> bytes:
    size = rng.randint(4 * 1024, 50 * 1024)
    has_attachment = rng.random() < 0.1
    body_size = int(size * (0.25 if has_attachment else 0.42))  # the HTML part is a little larger
    plain = text(rng, body_size)
    html = "<html><body><p>" + plain.replace("\r\n", "</p>\r\n<p>") + "</p></body></html>\r\n"
    parts = [f"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{plain}",
             f"--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{html}"]
    if has_attachment:
        blob = base64.encodebytes(rng.randbytes(int(size * 0.35))).decode().replace("\n", "\r\n")
        parts.append(f"--b\r\nContent-Type: application/pdf; name=a.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n{blob}")
    head = (f"From: Absender <info{i}@{from_domain}>\r\nTo: max.mustermann@school.test\r\n"
            f"Subject: {rng.choice(WORDS)} {i}\r\nDate: Mon, 01 Jun 2026 10:00:00 +0200\r\n"
            f"Message-ID: <{i}@{from_domain}>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/alternative; boundary=b\r\n\r\n")
    return (head + "".join(parts) + "--b--\r\n").encode()


def corpus(rng: random.Random, count: int, blobs: FileBlobStore) -> list[Work]:
    weights = [p[0] for p in PROFILES]
    works = []
    for i in range(count):
        _, ip, mail_domain, from_domain, signing = rng.choices(PROFILES, weights)[0]
        raw = make_message(rng, i, from_domain)
        if signing == "rsa" or signing == "tampered":
            raw = sign(raw, domain="good.test")
        elif signing == "ed25519":
            raw = sign(raw, domain="signed.test", selector="ed", algorithm="ed25519-sha256")
        if signing == "tampered":
            raw = raw.replace(b"</body>", b"<a href=x>mehr</a></body>", 1)
        received = Received(envelope=Envelope(mail_from=f"bounce{i}@{mail_domain}", rcpt_to=["max.mustermann@school.test"]),
                            client=Client(ip=ip, port=40000, helo="mx.ext.test"), blob=blobs.put(raw),
                            message_id=f"bench-{i}")
        works.append(Work(message=received))
    return works


async def run(stage: AuthStage, works: list[Work]) -> tuple[float, float, Counter]:
    return await time_stage(stage, works, lambda outcome: f"dmarc={outcome.details['dmarc']['result']}")


def stage_for(settings: Settings, blobs: FileBlobStore) -> AuthStage:
    return AuthStage(AuthSettings(), StageContext(settings=settings, blobs=blobs))


async def bench(args: argparse.Namespace, port: int, home: Path) -> None:
    rng = random.Random(args.seed)
    blobs = FileBlobStore(home / "blobs")
    works = corpus(rng, args.messages, blobs)
    sizes = [w.message.blob.size for w in works]
    print(f"{len(works)} messages, {min(sizes) // 1024}-{max(sizes) // 1024} KiB, mean {sum(sizes) // len(sizes) // 1024} KiB")
    dns = DnsSettings(nameserver=args.nameserver, port=port)
    cold = stage_for(dataclasses.replace(Settings(), dns=dataclasses.replace(dns, cache_size=0)), blobs)
    cpu, wall, results = await run(cold, works)
    print(f"cold cache: {len(works) / cpu:8.0f} events/s per core (CPU), {len(works) / wall:8.0f} events/s wall")
    warm = stage_for(dataclasses.replace(Settings(), dns=dns), blobs)
    await run(warm, works[:200])  # fill the cache
    cpu, wall, _ = await run(warm, works)
    print(f"warm cache: {len(works) / cpu:8.0f} events/s per core (CPU), {len(works) / wall:8.0f} events/s wall")
    print("results:", ", ".join(f"{k} {v}" for k, v in sorted(results.items())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--nameserver", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="a running NSD with deploy/local/dns; 0: start one")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="pst-bench-auth-"))
    server = None
    try:
        port = args.port
        if not port:
            from tests.servers import start_nsd
            server = start_nsd(home)
            port = server.port
        asyncio.run(bench(args, port, home))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
