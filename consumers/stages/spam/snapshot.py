"""Snapshots of the Bayes model: its state and the log positions it covers, so a start replays only the rest.

One file per learn topic, ``<home>/spam/bayes-<topic>.npz``: NumPy arrays (the token table, the
learned digests and their labels) and a JSON header (`SnapshotMeta`: format, tokenizer version,
topic, table size, class counts, the positions, when). Written to a temporary file and renamed, so a
reader sees a whole snapshot or the previous one; instances on one host may share the file (any
snapshot is a valid state with the positions it covers). Loaded without pickle. A snapshot of another
format, tokenizer version, topic or table size is ignored: the model replays the topic instead.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from pipeline.tables import Positions

__all__ = ["SNAPSHOT_FORMAT", "SnapshotMeta", "ModelState", "snapshot_path", "write_snapshot", "read_snapshot"]

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = 1


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    format: int
    tokenizer_version: int
    topic: str
    buckets: int
    nspam: int
    nham: int
    positions: Positions
    taken: float  # seconds since the epoch
    last_learned: str  # time of the newest learn event folded ("" none)


@dataclass(frozen=True, slots=True)
class ModelState:
    """Everything the fold holds: a snapshot's content."""

    meta: SnapshotMeta
    keys: np.ndarray
    counts: np.ndarray
    digests: np.ndarray  # uint64: the first 8 bytes of each learned message's digest
    labels: np.ndarray  # uint8, per digest


def snapshot_path(directory: Path, topic: str) -> Path:
    return directory / f"bayes-{re.sub(r'[^A-Za-z0-9._-]', '_', topic)}.npz"


def write_snapshot(path: Path, state: ModelState) -> None:
    """Write `state` to `path` atomically (a temporary file in the same directory, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = orjson.dumps(dataclasses.asdict(state.meta), option=orjson.OPT_NON_STR_KEYS).decode()
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            np.savez(out, meta=np.array(meta), keys=state.keys, counts=state.counts, digests=state.digests,
                     labels=state.labels)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _meta(text: str) -> SnapshotMeta:
    data = orjson.loads(text)
    positions = {table: {int(p): int(o) for p, o in parts.items()} for table, parts in data.pop("positions").items()}
    return SnapshotMeta(positions=positions, **data)


def read_snapshot(path: Path, *, topic: str, tokenizer_version: int, buckets: int, slots: int) -> ModelState | None:
    """The snapshot at `path` if it fits (see the module docstring), else None (logged)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = _meta(str(data["meta"]))
            state = ModelState(meta=meta, keys=data["keys"], counts=data["counts"], digests=data["digests"],
                               labels=data["labels"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("bayes: ignoring snapshot %s: unreadable (%s)", path, exc)
        return None
    expected = (SNAPSHOT_FORMAT, tokenizer_version, topic, (buckets, slots), (buckets, slots, 2))
    found = (meta.format, meta.tokenizer_version, meta.topic, state.keys.shape, state.counts.shape)
    if found != expected or state.digests.shape != state.labels.shape:
        log.warning("bayes: ignoring snapshot %s: made for %s, not %s", path, found, expected)
        return None
    return state
