"""route stage: messages per second per core, against a real slapd, with a cold and a warm directory cache.

    .venv/bin/python bench/stage_route.py [--messages 2000] [--classes 32] [--students 25] [--seed 1]

Runs `RouteStage.process()` in-process (no Kafka) with the local config's `[stages.route]`
(deploy/local/poststelle.toml: `directory = true`, the per-user forward attributes, the physik
sub-domain routes, the store2 destination, SRS on) over `--messages` messages of 1-3 recipients
each, from an outside sender. The directory is the demo school plus a generated school, loaded into a
slapd this script starts on a free port, as in bench/stage_expand.py. Each recipient is drawn from:

    55 %  a person's mailbox (a generated student or a demo person)   LDAP, no mailHost: lmtp
     5 %  paul.wagner@ (mailHost store2.school.test)                  LDAP: store2
     5 %  postmaster@ (not in the directory)                          LDAP, no entry: lmtp
    10 %  the routed sub-domain (physik.school.test and names under it)  the site table: physik
     5 %  a forward: ex.schueler@ (mailRoutingAddress to alumni.test),
          lisa.koch@ (a forward keeping a copy)                        LDAP; SRS sender for the copy out
    20 %  outside the local domains                                    the default: smarthost

Two passes over the same messages, one after the other (one message at a time), as in
bench/stage_expand.py: cold (a fresh `Directory`, empty cache) and warm (every answer cached;
`[ldap] cache_ttl` is an hour here). Prints messages/s per core, CPU-ms per message, the wall-clock
rate (which includes waiting for slapd), the LDAP requests each pass sent and the recipients per
destination.
"""
from __future__ import annotations

import argparse
import random
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.stage_expand import CONFIG, DEMO_PEOPLE  # noqa: E402
from bench.stagebench import School, envelope_works, rates, time_stage, with_school_slapd  # noqa: E402
from consumers.stages.route import RouteStage  # noqa: E402
from pipeline.blobstore import FileBlobStore  # noqa: E402
from pipeline.cli.components import load_config  # noqa: E402
from pipeline.stage import Outcome, StageContext  # noqa: E402

PHYSIK = ("dekan@physik.school.test", "labor@lab.physik.school.test", "mueller@physik.school.test")
FORWARDS = ("ex.schueler@school.test", "lisa.koch@school.test")
OUTSIDE = ("friend@example.org", "oma@web.test", "verein@sport.test", "amt@stadt.test")


def recipient(rng: random.Random, school: School) -> str:
    draw = rng.random()
    if draw < 0.55:
        return rng.choice(school.mailboxes) if rng.random() < 0.9 else f"{rng.choice(DEMO_PEOPLE)}@school.test"
    if draw < 0.60:
        return "paul.wagner@school.test"
    if draw < 0.65:
        return "postmaster@school.test"
    if draw < 0.75:
        return rng.choice(PHYSIK)
    if draw < 0.80:
        return rng.choice(FORWARDS)
    return rng.choice(OUTSIDE)


async def bench(args: argparse.Namespace, port: int, home: Path, school: School) -> None:
    settings = load_config(CONFIG, environ={"POSTSTELLE_HOME": str(home), "POSTSTELLE_LDAP__PORT": str(port),
                                            "POSTSTELLE_LDAP__CACHE_TTL": "3600"})
    stage = RouteStage(settings.stage_settings("route"), StageContext(settings=settings, blobs=FileBlobStore(home)))
    assert stage.directory is not None and stage.srs is not None, "the local config routes by the directory, with SRS"
    batch = envelope_works(random.Random(args.seed), args.messages, lambda rng: recipient(rng, school))
    recipients = sum(len(w.recipients) for w in batch)
    print(f"route: {args.messages} messages, {recipients} recipients ({recipients / args.messages:.2f} each); "
          f"directory: the demo school + {len(school.classes)} classes of {args.students} "
          f"({len(school.mailboxes)} students); slapd on 127.0.0.1:{port}")
    destinations: Counter = Counter()

    def classify(outcome: Outcome) -> str:
        destinations.update({name: len(routed) for name, routed in outcome.routes.items()})
        return "refused" if outcome.rejected else "srs-signed" if outcome.edits else "routed"

    await stage.start()
    try:
        for name in ("cold", "warm"):
            destinations.clear()
            before = stage.directory.requests
            cpu, wall, counts = await time_stage(stage, batch, classify)
            print(f"  {name}: {rates(args.messages, cpu, wall)}; {stage.directory.requests - before} LDAP requests; "
                  f"{dict(counts)}")
        print(f"  recipients per destination: {dict(destinations)}")
    finally:
        await stage.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--classes", type=int, default=32)
    parser.add_argument("--students", type=int, default=25)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with_school_slapd("pst-bench-route-", args.classes, args.students,
                      lambda port, home, school: bench(args, port, home, school))


if __name__ == "__main__":
    main()
