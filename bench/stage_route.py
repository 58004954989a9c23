"""route stage: messages per second per core, against a real slapd, with a cold and a warm directory cache.

    .venv/bin/python bench/stage_route.py [--messages 2000] [--classes 32] [--students 25] [--seed 1]

Runs `RouteStage.process()` in-process (no Kafka) with the local config's `[stages.route]`
(deploy/local/poststelle.toml: `directory = true`, the per-user forward attributes, the physik
sub-domain routes, the store2 destination, SRS on) over `--messages` messages of 1-3 recipients
each, from an outside sender. The directory is the demo school plus a generated school in a slapd of
the script's own, as in bench/stage_expand.py (bench/directorybench.py says what the cold and the
warm pass are). Each recipient is drawn from:

    55 %  a person's mailbox (a generated student or a demo person)   LDAP, no mailHost: lmtp
     5 %  paul.wagner@ (mailHost store2.school.test)                  LDAP: store2
     5 %  postmaster@ (not in the directory)                          LDAP, no entry: lmtp
    10 %  the routed sub-domain (physik.school.test and names under it)  the site table: physik
     5 %  a forward: ex.schueler@ (mailRoutingAddress to alumni.test),
          lisa.koch@ (a forward keeping a copy)                        LDAP; SRS sender for the copy out
    20 %  outside the local domains                                    the default: smarthost

The outcomes are counted by the destination of a message ("lmtp"), "several destinations", or
"forward, SRS" when a forwarded copy got an SRS envelope sender.
"""
from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.directorybench import DEMO_PEOPLE, School, run_directory_bench  # noqa: E402
from consumers.stages.route import RouteStage  # noqa: E402
from pipeline.stage import Outcome  # noqa: E402

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


def classify(outcome: Outcome) -> str:
    if outcome.rejected:
        return "refused"
    if any(e.kind == "envelope_sender" for e in outcome.edits):
        return "forward, SRS"
    return next(iter(outcome.routes)) if len(outcome.routes) == 1 else "several destinations"


if __name__ == "__main__":
    run_directory_bench("route", RouteStage, __doc__.split("\n\n")[0], recipient, classify)
