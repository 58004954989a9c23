"""What the benches of the stages that read LDAP share (bench/stage_expand.py, bench/stage_route.py).

`school_directory` writes the demo directory (deploy/local/directory.ldif) plus a generated school
(classes of students, each class a group with its list address) into one LDIF; `run_directory_bench`
loads it into a slapd of its own (`tests.servers.start_slapd`), builds the stage from the local
config (deploy/local/poststelle.toml) pointed at that slapd, and times two passes over the same
messages of 1-3 recipients each, one message at a time as the runner does:

- cold: a fresh `Directory` (empty cache); each distinct address is asked once;
- warm: the same messages again; every answer is cached (`[ldap] cache_ttl` is an hour here so
  that none expires between the passes; the default is 60 s).

Each pass prints messages/s per core (`time.process_time()`: this process, the LDAP pool threads
included), CPU-ms per message, the wall-clock rate (which includes waiting for slapd), the LDAP
requests sent and the outcomes as `classify` names them.
"""
from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.stagebench import rates, time_stage
from pipeline.blobstore import FileBlobStore
from pipeline.cli.components import load_config
from pipeline.localstack.slapd import LDIF
from pipeline.stage import Outcome, StageContext, Work
from schemas.events import BlobRef, Client, Envelope, Received
from schemas.ids import new_id

__all__ = ["DEMO_PEOPLE", "School", "run_directory_bench", "school_directory"]

CONFIG = Path(__file__).resolve().parents[1] / "deploy/local/poststelle.toml"
GRADES = range(5, 13)  # classes 5a ... 12d, as "k5a@school.test" (the demo's 9a and 9b stay as they are)
DEMO_PEOPLE = ("anna.schmidt", "max.mustermann", "lena.mueller", "tom.becker", "eltern.mustermann", "eltern.mueller")


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


def envelope_works(rng: random.Random, count: int, recipient: Callable[[random.Random], str]) -> list[Work]:
    """`count` messages from an outside sender with 1-3 distinct recipients drawn by `recipient` (the blob
    is a placeholder: these stages read the envelope only)."""
    blob = BlobRef(sha256="0" * 64, size=0)
    return [Work(message=Received(
        message_id=new_id(), client=Client(ip="192.0.2.7", port=40000), blob=blob,
        envelope=Envelope(mail_from="eltern@example.org",
                          rcpt_to=list(dict.fromkeys(recipient(rng) for _ in range(rng.randint(1, 3)))))))
        for _ in range(count)]


async def _passes(name: str, stage_class: Any, args: argparse.Namespace, port: int, home: Path, school: School,
                  recipient: Callable[[random.Random, School], str], classify: Callable[[Outcome], str]) -> None:
    settings = load_config(CONFIG, environ={"POSTSTELLE_HOME": str(home), "POSTSTELLE_LDAP__PORT": str(port),
                                            "POSTSTELLE_LDAP__CACHE_TTL": "3600"})
    stage = stage_class(settings.stage_settings(name), StageContext(settings=settings, blobs=FileBlobStore(home)))
    assert stage.directory is not None, f"the local config's {name} stage reads the directory"
    batch = envelope_works(random.Random(args.seed), args.messages, lambda rng: recipient(rng, school))
    recipients = sum(len(w.recipients) for w in batch)
    print(f"{name}: {args.messages} messages, {recipients} recipients ({recipients / args.messages:.2f} each); "
          f"directory: the demo school + {len(school.classes)} classes of {args.students} "
          f"({len(school.mailboxes)} students); slapd on 127.0.0.1:{port}")
    await stage.start()
    try:
        for label in ("cold", "warm"):
            before = stage.directory.requests
            cpu, wall, counts = await time_stage(stage, batch, classify)
            print(f"  {label}: {rates(args.messages, cpu, wall)}; {stage.directory.requests - before} LDAP requests")
        print(f"  outcomes (each pass): {dict(sorted(counts.items()))}")
    finally:
        await stage.close()


def run_directory_bench(name: str, stage_class: Any, description: str,
                        recipient: Callable[[random.Random, School], str], classify: Callable[[Outcome], str]) -> None:
    """Parse the common options, start the slapd, time the cold and the warm pass (module docstring)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--classes", type=int, default=32)
    parser.add_argument("--students", type=int, default=25)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    from tests.servers import start_slapd  # the test suite's slapd starter

    home = Path(tempfile.mkdtemp(prefix=f"pst-bench-{name}-"))
    server = None
    try:
        school = school_directory(home / "school.ldif", args.classes, args.students)
        server = start_slapd(home, home / "school.ldif")
        asyncio.run(_passes(name, stage_class, args, server.port, home, school, recipient, classify))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(home, ignore_errors=True)
