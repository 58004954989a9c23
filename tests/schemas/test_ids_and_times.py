"""Event ids and times: the fast paths give exactly what the standard library would."""

import datetime as dt
import os
import random
import uuid

from schemas.ids import id_time_ms, new_id
from schemas.parts import epoch_from_iso, iso_from_epoch


def _reference_iso(seconds: float) -> str:
    moment = dt.datetime.fromtimestamp(seconds, dt.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_times_are_written_as_datetime_writes_them_rounding_included():
    rng = random.Random(14)
    moments = [rng.uniform(0, 4_102_444_800) for _ in range(50_000)]
    moments += [1_700_000_000 + rng.random() for _ in range(50_000)]  # many within the same seconds
    moments += [0.0, 1.9999995, 1.0000005, 1_700_000_000.9999996, 1_700_000_000.0004995, 59.9999999]
    assert [iso_from_epoch(m) for m in moments] == [_reference_iso(m) for m in moments]
    assert iso_from_epoch(1_700_000_000.9999996) == "2023-11-14T22:13:21.000Z"  # rounded into the next second
    assert abs(epoch_from_iso(iso_from_epoch(1_700_000_000.25)) - 1_700_000_000.25) < 0.001


def test_ids_are_uuid7_unique_and_in_creation_order():
    ids = [new_id() for _ in range(20_000)]  # several pools of random bytes
    assert len(set(ids)) == len(ids) and ids == sorted(ids)
    for text in ids[::97]:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (7, uuid.RFC_4122, text)
    assert id_time_ms(ids[0]) <= id_time_ms(ids[-1])


def test_a_forked_child_does_not_reuse_its_parents_random_bits():
    new_id()  # the parent has a pool
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        os.write(write, new_id()[19:].encode())
        os._exit(0)
    parent = new_id()[19:]
    os.waitpid(pid, 0)
    assert os.read(read, 64).decode() != parent
