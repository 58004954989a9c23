"""The virus stage: messages per second through `VirusStage.process()` against a real clamd.

No Kafka: the stage is called in-process, as the runner would (one message at a time, or
`--concurrency` at once), over generated 4–50 KiB messages stored in a blob store under a
temporary directory. Without `--address`, the script starts its own clamd the way the local stack
does (`pipeline.localstack.clamd`, the project's signatures only) on a free loopback port, and also
reads that clamd's CPU time from /proc.

    .venv/bin/python bench/stage_virus.py [--messages 3000] [--concurrency 1] [--seed 1]
                                          [--address 127.0.0.1:3310]

Message mix (sizes uniform in 4–50 KiB): 55 % plain text, 10 % HTML, 20 % a base64 attachment
(PDF-like bytes), 10 % a zip attachment, 5 % infected (the EICAR string as an attachment).
Prints wall-clock messages/s, and messages per CPU-second of this process (the client side: blob
read, INSTREAM framing, asyncio) and of clamd (the scan itself); "per core" for the whole stage is
messages per CPU-second of both together.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consumers.stages.virus import VirusStage  # noqa: E402
from pipeline.blobstore import FileBlobStore  # noqa: E402
from pipeline.localstack.clamd import clamd_service  # noqa: E402
from pipeline.cli.components import load_config  # noqa: E402
from pipeline.stage import StageContext, Work  # noqa: E402
from schemas.events import Client, Envelope, Received  # noqa: E402
from schemas.ids import new_id  # noqa: E402
from tests.virus_samples import eicar, mail_with_attachment, zipped  # noqa: E402

WORDS = ("Schule Klasse Elternabend Termin Zeugnis Ausflug Hausaufgaben Mathematik Deutsch Sport Projekt "
         "Anmeldung Rückmeldung Vertretung Stundenplan Konferenz bitte danke morgen heute nächste Woche").split()


def text(rng: random.Random, size: int) -> str:
    lines, total = [], 0
    while total < size:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14)))
        lines.append(line)
        total += len(line) + 1
    return "\n".join(lines) + "\n"


def message(rng: random.Random, index: int) -> tuple[str, bytes]:
    size = rng.randint(4 * 1024, 50 * 1024)
    kind = rng.choices(["text", "html", "attachment", "zip", "infected"], [55, 10, 20, 10, 5])[0]
    head = (f"From: sender{index}@example.org\r\nTo: max.mustermann@school.test\r\n"
            f"Subject: Nachricht {index}\r\nMessage-ID: <{index}@example.org>\r\n")
    if kind == "text":
        return kind, (head + "\r\n" + text(rng, size).replace("\n", "\r\n")).encode()
    if kind == "html":
        body = "".join(f"<p>{p}</p>\r\n" for p in text(rng, size).splitlines())
        return kind, (head + "Content-Type: text/html; charset=utf-8\r\n\r\n<html><body>\r\n" + body
                      + "</body></html>\r\n").encode()
    if kind == "attachment":
        payload = b"%PDF-1.4\n" + rng.randbytes(size * 3 // 4)
        return kind, mail_with_attachment("bericht.pdf", payload, body=text(rng, 600), content_type="application/pdf")
    if kind == "zip":
        archive = zipped({"tabelle.csv": text(rng, size * 2).encode(), "bild.bin": rng.randbytes(size // 3)})
        return kind, mail_with_attachment("unterlagen.zip", archive, body=text(rng, 600), content_type="application/zip")
    return kind, mail_with_attachment("test.com", eicar(), body=text(rng, size))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_clamd(home: Path) -> tuple[subprocess.Popen, str, float]:
    port = free_port()
    spec = clamd_service(home, "127.0.0.1", port)
    started = time.monotonic()
    log = open(home / "clamd.log", "wb")
    process = subprocess.Popen(spec.argv, cwd=spec.cwd, stdout=log, stderr=subprocess.STDOUT)
    while not spec.ready_probe():
        if process.poll() is not None or time.monotonic() - started > 60:
            raise SystemExit(f"clamd did not start:\n{(home / 'clamd.log').read_text()[-2000:]}")
        time.sleep(0.005)
    return process, f"127.0.0.1:{port}", time.monotonic() - started


async def run(args: argparse.Namespace, home: Path) -> None:
    rng = random.Random(args.seed)
    clamd = None
    address = args.address
    if not address:
        clamd, address, startup = start_clamd(home)
        print(f"clamd {address} ready (PONG) after {startup * 1000:.0f} ms")
    settings = load_config(None, environ={"POSTSTELLE_HOME": str(home), "POSTSTELLE_TOPOLOGY__STAGES": "virus,route",
                                            "POSTSTELLE_STAGES__VIRUS__ADDRESS": address})
    blobs = FileBlobStore(home / "blobs")
    stage = VirusStage(settings.stage_settings("virus"), StageContext(settings=settings, blobs=blobs))
    await stage.start()
    works, kinds, total_bytes = [], {}, 0
    for i in range(args.messages + args.warmup):
        kind, raw = message(rng, i)
        kinds[kind] = kinds.get(kind, 0) + 1
        total_bytes += len(raw)
        event = Received(message_id=new_id(), envelope=Envelope(mail_from="a@example.org",
                                                                rcpt_to=["max.mustermann@school.test"]),
                         client=Client(ip="192.0.2.1", port=1, helo="example.org"), blob=blobs.put(raw))
        works.append((kind, Work(message=event)))
    warm, measured = works[:args.warmup], works[args.warmup:]
    for _, work in warm:
        await stage.process(work)

    outcomes: dict[str, int] = {}
    latency: dict[str, list[float]] = {}
    queue = list(measured)

    async def worker() -> None:
        while queue:
            kind, work = queue.pop()
            started = time.perf_counter()
            outcome = await stage.process(work)
            latency.setdefault(kind, []).append(time.perf_counter() - started)
            key = "rejected" if outcome.reject else "quarantined" if outcome.quarantine else "passed"
            outcomes[key] = outcomes.get(key, 0) + 1

    clamd_cpu0 = cpu_seconds(clamd.pid) if clamd else 0.0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    clamd_cpu = cpu_seconds(clamd.pid) - clamd_cpu0 if clamd else 0.0
    await stage.close()
    if clamd:
        clamd.terminate()
        clamd.wait(10)

    n = len(measured)
    print(f"{n} messages (+{args.warmup} warm-up), mean {total_bytes / (n + args.warmup) / 1024:.1f} KiB, "
          f"mix {dict(sorted(kinds.items()))}, outcomes {dict(sorted(outcomes.items()))}, "
          f"concurrency {args.concurrency}")
    print(f"wall clock:   {n / wall:8.0f} msg/s  ({wall * 1000 / n:.2f} ms per message)")
    print("mean latency: " + ", ".join(f"{kind} {sum(v) * 1000 / len(v):.1f} ms" for kind, v in sorted(latency.items())))
    print(f"stage CPU:    {n / cpu:8.0f} msg/s per core  ({cpu * 1e6 / n:.0f} us per message, this process)")
    if clamd:
        print(f"clamd CPU:    {n / clamd_cpu:8.0f} msg/s per core  ({clamd_cpu * 1e6 / n:.0f} us per message)")
        print(f"stage+clamd:  {n / (cpu + clamd_cpu):8.0f} msg/s per core")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--address", default="", help="an existing clamd (host:port or unix:PATH); default: start one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-virus-") as tmp:
        asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    main()
