"""The token counts of the Bayes model: a fixed table, so its memory is known before the first message.

The model never holds a token's text, only its 64-bit hash (`tokens.token_hashes`), and never more
than a fixed number of them: `TokenTable(capacity)` allocates, once, `buckets × SLOTS` entries of 16
bytes (the hash, 8; the spam and ham message counts, 4 each), with `buckets` the power of two that
gives at least `capacity` entries. The default 2,097,152 entries take 32 MiB, whatever is learned.

A token lives in the bucket its hash's low bits name. **The rule past the cap**: a full bucket keeps
the `SLOTS` tokens with the smallest hashes among all tokens ever *touched* there (learned,
relearned or forgotten); a token with a larger hash is not counted (`refused`), and a smaller one
takes the place of the largest, whose counts go. Tokens are never removed otherwise, not even when
their counts fall to zero. So which tokens the table holds is a function of the *set* of tokens in
the log, not of the order records arrive in: instances reading the learn topic's partitions
interleaved differently, a snapshot plus the records after it, and a replay from the beginning all
hold the same tokens with the same counts. Past the cap the hashes decide, which is a uniform
sample: the tokens lost are mostly those seen once (most tokens are).
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["TokenTable", "SLOTS", "SPAM", "HAM"]

SLOTS = 8  # entries per bucket: 64 bytes of hashes, one cache line
SPAM, HAM = 0, 1  # columns of `counts`


class TokenTable:
    """Spam and ham message counts of at most `capacity` (rounded up) token hashes."""

    def __init__(self, capacity: int) -> None:
        buckets = 1 << max(0, math.ceil(math.log2(max(1, math.ceil(capacity / SLOTS)))))
        self.keys = np.zeros((buckets, SLOTS), dtype=np.uint64)  # 0: an empty entry
        self.counts = np.zeros((buckets, SLOTS, 2), dtype=np.uint32)
        self.mask = np.uint64(buckets - 1)
        self.refused = 0  # touches of tokens past the cap (since this process started)

    @property
    def buckets(self) -> int:
        return len(self.keys)

    @property
    def capacity(self) -> int:
        return self.keys.size

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.counts.nbytes

    def held(self) -> int:
        """Tokens in the table (counted or not)."""
        return int(np.count_nonzero(self.keys))

    def counted(self) -> int:
        """Tokens with a non-zero count."""
        return int(np.count_nonzero(self.counts.any(axis=2)))

    def find(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(bucket, slot) of each hash; slot -1 where the table does not hold it."""
        buckets = (hashes & self.mask).astype(np.intp)
        hit = self.keys[buckets] == hashes[:, None]
        return buckets, np.where(hit.any(axis=1), hit.argmax(axis=1), -1)

    def lookup(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(spam, ham) counts of each hash, 0 for tokens the table does not hold."""
        buckets, slots = self.find(hashes)
        held = slots >= 0
        spam, ham = np.zeros(len(hashes), np.int64), np.zeros(len(hashes), np.int64)
        spam[held] = self.counts[buckets[held], slots[held], SPAM]
        ham[held] = self.counts[buckets[held], slots[held], HAM]
        return spam, ham

    def touch(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Take distinct `hashes` in by the rule of the module docstring; (bucket, slot) of each, -1: refused."""
        buckets, slots = self.find(hashes)
        missing = np.flatnonzero(slots < 0)
        if not len(missing):
            return buckets, slots
        self._insert(buckets[missing], hashes[missing])
        return self.find(hashes)  # an insert may have displaced a token found before it

    def _insert(self, buckets: np.ndarray, keys: np.ndarray) -> None:
        """Insert keys not in the table, in rounds of one key per bucket (the outcome is the same in any order)."""
        while len(keys):
            _, first = np.unique(buckets, return_index=True)
            now, rows = buckets[first], self.keys[buckets[first]]
            free = rows == 0
            has_free = free.any(axis=1)
            self.keys[now[has_free], free[has_free].argmax(axis=1)] = keys[first][has_free]
            full = ~has_free
            largest = rows[full].argmax(axis=1)
            smaller = keys[first][full] < rows[full][np.arange(len(largest)), largest]
            self.keys[now[full][smaller], largest[smaller]] = keys[first][full][smaller]
            self.counts[now[full][smaller], largest[smaller]] = 0
            self.refused += int(np.count_nonzero(~smaller))
            rest = np.ones(len(keys), bool)
            rest[first] = False
            buckets, keys = buckets[rest], keys[rest]

    def add(self, buckets: np.ndarray, slots: np.ndarray, column: int, delta: int) -> None:
        """Add `delta` (+1 or -1, never below zero) to `column` of the entries `touch` returned."""
        held = slots >= 0
        where = (buckets[held], slots[held], column)
        current = self.counts[where]
        self.counts[where] = current + 1 if delta > 0 else current - (current > 0)
