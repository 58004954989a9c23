"""blocklist stage: messages per second per core, against a real NSD, with a cold and a warm DNS cache.

    .venv/bin/python bench/stage_blocklist.py [--messages 2000] [--entries 1000] [--seed 1]
                                              [--nameserver 127.0.0.1:5353]

Runs `BlocklistStage.process()` in-process (no Kafka) over `--messages` generated messages of
4-50 KiB: multipart/alternative text + HTML (quoted-printable or base64) with 3-30 links each over a
pool of link domains (one in fifty messages links bad-link.test, listed in multi.uribl.test), a
From domain, and one message in four with a base64 attachment. The site's lists hold `--entries`
entries of each kind (address, domain, cidr, sha256), none matching, so every message goes through
every lookup. DNS: the local config's lists (multi.uribl.test, dbl.rhsbl.test) on a real NSD, which
this script starts on a free port from deploy/local/dns/ (or the one at `--nameserver`).

Two passes over the same messages, one after the other, as the runner does (one message at a time):

- cold: a fresh resolver cache; every distinct domain is asked once over UDP;
- warm: the same messages again, every answer cached (TTLs of the test zones are 60 s).

Prints messages/s per core (`time.process_time()`, one thread) and the wall-clock rate (which
includes waiting for NSD).
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import shutil
import sys
import tempfile
from collections import Counter
from email.message import EmailMessage
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.stagebench import time_stage  # noqa: E402
from consumers.stages.blocklist import BlocklistSettings, BlocklistStage  # noqa: E402
from pipeline.blobstore import FileBlobStore  # noqa: E402
from pipeline.clients.dns import Resolver  # noqa: E402
from pipeline.clients.dnslists import ListSite  # noqa: E402
from pipeline.settings import Settings  # noqa: E402
from pipeline.stage import StageContext, Work  # noqa: E402
from pipeline.state.sitelists import SiteLists, parse_entry  # noqa: E402
from schemas.events import Client, Envelope, Received, Verdict  # noqa: E402

WORDS = ("Termin Elternabend Klasse Hausaufgaben Mathematik Bitte Rückmeldung bis Freitag Schule Ausflug "
         "Rechnung Konto Zugang Passwort Anmeldung Portal Unterlagen Zeugnis Lehrer Sekretariat").split()
FROM_DOMAINS = ("good.test", "ext.test", "quarantine.test", "mailonly.test", "partner.test")


def _text(rng: random.Random, size: int, links: list[str]) -> str:
    words, length = [], 0
    while length < size:
        word = rng.choice(WORDS)
        if links and rng.random() < 0.02:
            word = links.pop()
        words.append(word)
        length += len(word) + 1
    return " ".join(words + links)


def make_message(rng: random.Random, index: int, link_pool: list[str]) -> bytes:
    size = rng.randint(4 * 1024, 50 * 1024)
    links = [f"https://{rng.choice(link_pool)}/p/{rng.randint(1, 9999)}" for _ in range(rng.randint(3, 30))]
    if index % 50 == 0:
        links.append("http://www.bad-link.test/login")
    message = EmailMessage()
    message["From"] = f"Absender <a{index}@{rng.choice(FROM_DOMAINS)}>"
    message["To"] = "max.mustermann@school.test"
    message["Subject"] = f"Nachricht {index}"
    has_attachment = index % 4 == 0
    text_size = size // 2 if has_attachment else size * 2 // 5
    plain = _text(rng, text_size, list(links))
    html = "<html><body>" + "".join(f'<p>{rng.choice(WORDS)} <a href="{u}">{rng.choice(WORDS)}</a></p>'
                                     for u in links) + f"<p>{_text(rng, text_size // 2, [])}</p></body></html>"
    message.set_content(plain, cte="quoted-printable")
    message.add_alternative(html, subtype="html", cte="base64")
    if has_attachment:
        message.add_attachment(rng.randbytes(size // 3), maintype="application", subtype="pdf",
                               filename=f"anhang{index}.pdf")
    return message.as_bytes()


def site_lists(entries: int) -> SiteLists:
    lists = SiteLists(None)
    for i in range(entries):
        lists.put(parse_entry("block", "address", f"spammer{i}@blocked{i}.test"))
        lists.put(parse_entry("block", "domain", f"blocked-domain{i}.test"))
        lists.put(parse_entry("block", "cidr", f"10.{i // 256 % 256}.{i % 256}.0/24"))
        lists.put(parse_entry("block", "sha256", hashlib.sha256(str(i).encode()).hexdigest()))
        lists.put(parse_entry("allow", "domain", f"allowed{i}.test"))
    return lists


async def run_pass(stage: BlocklistStage, works: list[Work]) -> tuple[float, float, Counter]:
    return await time_stage(stage, works, lambda outcome: "reject" if outcome.reject else str(outcome.verdict))


async def bench(args: argparse.Namespace, host: str, port: int, home: Path) -> None:
    rng = random.Random(args.seed)
    link_pool = [f"www.site{i}.test" for i in range(args.messages // 2)] + ["good.test", "ext.test"]
    blobs = FileBlobStore(home / "blobs")
    works, total_bytes = [], 0
    for i in range(args.messages):
        raw = make_message(rng, i, link_pool)
        total_bytes += len(raw)
        ref = blobs.put(raw)
        message = Received(envelope=Envelope(mail_from=f"a{i}@ext.test", rcpt_to=["max.mustermann@school.test"]),
                           client=Client(ip=f"127.0.2.{i % 200 + 20}", port=25), blob=ref)
        works.append(Work(message=message))
    settings = BlocklistSettings(
        uribl=[ListSite(zone="multi.uribl.test", codes=["127.0.0.2-127.0.0.3"], weight=1)],
        rhsbl=[ListSite(zone="dbl.rhsbl.test", codes=["127.0.1.2-127.0.1.99"], weight=1)])
    resolver = Resolver(host, port, timeout=3.0)
    stage = BlocklistStage(settings, StageContext(Settings(), blobs), resolver=resolver, lists=site_lists(args.entries))
    await stage.start()
    print(f"{args.messages} messages, {total_bytes / args.messages / 1024:.1f} KiB average, "
          f"{args.entries} entries of each kind in the site's block list; NSD at {host}:{port}")
    for name in ("cold", "warm"):
        cpu, wall, verdicts = await run_pass(stage, works)
        print(f"  {name}: {args.messages / cpu:8.0f} messages/s per core (CPU {cpu:.2f} s), "
              f"{args.messages / wall:8.0f} messages/s wall ({1000 * wall / args.messages:.2f} ms each); "
              f"verdicts {dict(verdicts)}; resolver cache {len(resolver.cache)} answers")
        if name == "cold":
            assert verdicts.get(str(Verdict.FAIL), 0) >= args.messages // 50, "the listed links were not found"
    await stage.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--entries", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--nameserver", default="", help="host:port of a running NSD with deploy/local/dns")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="pst-bench-blocklist-"))
    server = None
    try:
        if args.nameserver:
            host, _, port = args.nameserver.rpartition(":")
            target = (host, int(port))
        else:
            from tests.servers import start_nsd  # the test suite's NSD starter

            server = start_nsd(home)
            target = ("127.0.0.1", server.port)
        asyncio.run(bench(args, *target, home))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
