"""expand stage: messages per second per core, against a real slapd, with a cold and a warm directory cache.

    .venv/bin/python bench/stage_expand.py [--messages 2000] [--classes 32] [--students 25] [--seed 1]

Runs `ExpandStage.process()` in-process (no Kafka) with the local config's `[stages.expand]` over
`--messages` messages of 1-3 recipients each. The directory is the demo school
(deploy/local/directory.ldif: 9a, 9b, staff, parents, the nested jahrgang9, the looping schach, the
alias sekretariat@) plus a generated school of `--classes` classes of `--students` students (group
k5a@school.test and so on, one student in ten with an alias), in a slapd this script starts on a free
port (bench/directorybench.py, which also says what the cold and the warm pass are). Each recipient
is drawn from this mix:

    55 %  a person's mailbox (a generated student or a demo person)  left as it is
     8 %  an alias (a student's, or sekretariat@)                     replaced by the mailbox
    15 %  a class of the generated school (`--students` members)     replaced by the members
     7 %  a demo group (1-3 members, nested, looping)                  replaced by the members
    15 %  outside the local domains, or postmaster@                    not asked (outside) / unknown
"""
from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.directorybench import DEMO_PEOPLE, School, run_directory_bench  # noqa: E402
from consumers.stages.expand import ExpandStage  # noqa: E402
from pipeline.stage import Outcome  # noqa: E402

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


if __name__ == "__main__":
    run_directory_bench("expand", ExpandStage, __doc__.split("\n\n")[0], recipient, classify)
