"""expand stage: messages per second per core, against a real slapd, with a cold and a warm directory cache.

    .venv/bin/python bench/stage_expand.py [--messages 2000] [--classes 32] [--students 25] [--seed 1]

Runs `ExpandStage.process()` in-process (no Kafka) over `--messages` messages of 1-3 recipients each.
The directory is the demo school (deploy/local/directory.ldif: 9a, 9b, staff, parents, the nested
jahrgang9, the looping schach, the alias sekretariat@) plus a generated school of `--classes` classes
of `--students` students (`bench.stagebench.school_directory`: group k5a@school.test and so on, one
student in ten with an alias), loaded into a slapd this script starts on a free port
(`tests.servers.start_slapd`). Each recipient is drawn from this mix:

    55 %  a person's mailbox (a generated student or a demo person)  left as it is
     8 %  an alias (a student's, or sekretariat@)                     replaced by the mailbox
    15 %  a class of the generated school (`--students` members)     replaced by the members
     7 %  a demo group (1-3 members, nested, looping)                  replaced by the members
    15 %  outside the local domains, or postmaster@                    not asked (outside) / unknown

Two passes over the same messages, one after the other, as the runner does (one message at a time):

- cold: a fresh `Directory` (empty cache); each distinct address is asked once;
- warm: the same messages again; every answer is cached (`[ldap] cache_ttl` is set to an hour here
  so that none expires between the passes; the default is 60 s).

Prints messages/s per core (`time.process_time()`: this process, the LDAP pool threads included),
CPU-ms per message and the wall-clock rate (which includes waiting for slapd), and the LDAP
requests each pass sent.
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.stagebench import School, envelope_works, rates, time_stage, with_school_slapd  # noqa: E402
from consumers.stages.expand import ExpandStage  # noqa: E402
from pipeline.blobstore import FileBlobStore  # noqa: E402
from pipeline.cli.components import load_config  # noqa: E402
from pipeline.stage import Outcome, StageContext  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "deploy/local/poststelle.toml"
DEMO_PEOPLE = ("anna.schmidt", "max.mustermann", "lena.mueller", "tom.becker", "eltern.mustermann", "eltern.mueller")
DEMO_GROUPS = ("9a", "9b", "staff", "parents", "jahrgang9", "schach")
OUTSIDE = ("friend@example.org", "oma@web.test", "verein@sport.test", "postmaster@school.test")


def recipient(rng: random.Random, school: School) -> str:
    draw = rng.random()
    if draw < 0.55:
        return rng.choice(school.mailboxes) if rng.random() < 0.9 else f"{rng.choice(DEMO_PEOPLE)}@school.test"
    if draw < 0.63:
        return rng.choice(school.aliases) if rng.random() < 0.7 else "sekretariat@school.test"
    if draw < 0.78:
        return rng.choice(school.classes)
    if draw < 0.85:
        return f"{rng.choice(DEMO_GROUPS)}@school.test"
    return rng.choice(OUTSIDE)


def classify(outcome: Outcome) -> str:
    return "refused" if outcome.rejected else "replaced" if outcome.replace else "unchanged"


async def bench(args: argparse.Namespace, port: int, home: Path, school: School) -> None:
    settings = load_config(CONFIG, environ={"POSTSTELLE_HOME": str(home), "POSTSTELLE_LDAP__PORT": str(port),
                                              "POSTSTELLE_LDAP__CACHE_TTL": "3600"})
    stage = ExpandStage(settings.stage_settings("expand"), StageContext(settings=settings, blobs=FileBlobStore(home)))
    batch = envelope_works(random.Random(args.seed), args.messages, lambda rng: recipient(rng, school))
    recipients = sum(len(w.recipients) for w in batch)
    print(f"expand: {args.messages} messages, {recipients} recipients ({recipients / args.messages:.2f} each); "
          f"directory: the demo school + {len(school.classes)} classes of {args.students} "
          f"({len(school.mailboxes)} students); slapd on 127.0.0.1:{port}")
    await stage.start()
    try:
        for name in ("cold", "warm"):
            before = stage.directory.requests
            cpu, wall, counts = await time_stage(stage, batch, classify)
            print(f"  {name}: {rates(args.messages, cpu, wall)}; {stage.directory.requests - before} LDAP requests; "
                  f"{dict(counts)}")
    finally:
        await stage.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--classes", type=int, default=32)
    parser.add_argument("--students", type=int, default=25)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with_school_slapd("pst-bench-expand-", args.classes, args.students,
                      lambda port, home, school: bench(args, port, home, school))


if __name__ == "__main__":
    main()
