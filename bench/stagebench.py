"""What the stage benchmarks share: running a stage over messages one at a time, timed; a school directory.

CPU time is `time.process_time()` of this process (threads the stage starts included), wall time
`time.perf_counter()`; each outcome is counted under `classify(outcome)`.

`school_directory` writes the demo directory (deploy/local/directory.ldif) plus a generated school
(classes of students, each class a group with its list address) into one LDIF, for the benches of the
stages that read LDAP (expand, route) to load into their own slapd (`tests.servers.start_slapd`).
"""
from __future__ import annotations

import asyncio
import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.localstack.slapd import LDIF
from pipeline.stage import Outcome, Stage, Work
from schemas.events import BlobRef, Client, Envelope, Received
from schemas.ids import new_id

__all__ = ["School", "envelope_works", "rates", "school_directory", "time_stage", "with_school_slapd"]

GRADES = range(5, 13)  # classes 5a ... 12d, as "k5a@school.test" (the demo's 9a and 9b stay as they are)


async def time_stage(stage: Stage, works: list[Work], classify: Callable[[Outcome], str]) -> tuple[float, float, Counter]:
    """(CPU seconds, wall seconds, outcome counts) of `stage.process` over `works`, in order."""
    counts: Counter = Counter()
    cpu, wall = time.process_time(), time.perf_counter()
    for work in works:
        counts[classify(await stage.process(work))] += 1
    return time.process_time() - cpu, time.perf_counter() - wall, counts


def envelope_works(rng: random.Random, count: int, recipient: Callable[[random.Random], str],
                   sender: str = "eltern@example.org") -> list[Work]:
    """`count` messages of 1-3 distinct recipients drawn by `recipient`, for stages that read the envelope only
    (their blob is a placeholder that is not in any store)."""
    blob = BlobRef(sha256="0" * 64, size=0)
    return [Work(message=Received(
        message_id=new_id(), client=Client(ip="192.0.2.7", port=40000), blob=blob,
        envelope=Envelope(mail_from=sender, rcpt_to=list(dict.fromkeys(recipient(rng) for _ in range(rng.randint(1, 3)))))))
        for _ in range(count)]


def rates(count: int, cpu: float, wall: float) -> str:
    """"1234 messages/s per core (0.81 CPU-ms each), 900 messages/s wall (1.11 ms each)"."""
    return (f"{count / cpu:8,.0f} messages/s per core ({1000 * cpu / count:.3f} CPU-ms each), "
            f"{count / wall:8,.0f} messages/s wall ({1000 * wall / count:.3f} ms each)")


@dataclass(frozen=True, slots=True)
class School:
    """The generated part of `school_directory`: the students' mailboxes and the classes' list addresses."""

    mailboxes: list[str]
    classes: list[str]
    aliases: list[str]  # every tenth student also has an alias (mailLocalAddress)


def school_directory(path: Path, classes: int, students: int) -> School:
    """Write the demo LDIF plus `classes` classes of `students` students each to `path`."""
    names = [f"k{grade}{letter}" for letter in "abcd" for grade in GRADES][:classes]
    chunks, mailboxes, aliases = [LDIF.read_text(encoding="utf-8").rstrip("\n") + "\n"], [], []
    for name in names:
        members = []
        for i in range(students):
            uid = f"{name}.s{i:02d}"
            mailboxes.append(f"{uid}@school.test")
            alias = f"alias.{uid}@school.test" if i % 10 == 0 else ""
            aliases += [alias] if alias else []
            members.append(f"uid={uid},ou=people,dc=school,dc=test")
            chunks.append(f"\ndn: uid={uid},ou=people,dc=school,dc=test\nobjectClass: inetOrgPerson\n"
                          f"objectClass: inetLocalMailRecipient\nuid: {uid}\n"
                          f"cn: Schueler {i} {name}\nsn: {name}\nemployeeType: student\nmail: {uid}@school.test\n"
                          + (f"mailLocalAddress: {alias}\n" if alias else ""))
        chunks.append(f"\ndn: cn={name},ou=groups,dc=school,dc=test\nobjectClass: groupOfNames\n"
                      f"objectClass: extensibleObject\ncn: {name}\ndescription: Klasse {name}\nmail: {name}@school.test\n"
                      "owner: uid=anna.schmidt,ou=people,dc=school,dc=test\n" + "".join(f"member: {m}\n" for m in members))
    path.write_text("".join(chunks), encoding="utf-8")
    return School(mailboxes, [f"{n}@school.test" for n in names], aliases)


def with_school_slapd(prefix: str, classes: int, students: int,
                      run: Callable[[int, Path, School], Awaitable[None]]) -> None:
    """`run(slapd port, home, school)` with a slapd of its own serving `school_directory`, in a temp home."""
    from tests.servers import start_slapd  # the test suite's slapd starter

    home = Path(tempfile.mkdtemp(prefix=prefix))
    server = None
    try:
        school = school_directory(home / "school.ldif", classes, students)
        server = start_slapd(home, home / "school.ldif")
        asyncio.run(run(server.port, home, school))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(home, ignore_errors=True)
