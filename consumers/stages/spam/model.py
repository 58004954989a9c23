"""The Bayes model as a fold of the learn topic: every instance that read the same log holds the same model.

Training is events (`schemas.events.SpamLearned`) on the compacted topic ``<prefix>.spam.learn``,
keyed by the message's digest (`tokens.token_digest`: what makes "the same message"). The model is
defined as: for every digest, the *latest* record counts its tokens once in its class ("spam" or
"ham"; "forget": in none). So

- learning a message twice in the same class counts it once;
- learning it in the other class moves its counts (SpamAssassin's relearn);
- `forget` removes them;
- the fold does not depend on how the partitions interleave (records of one digest share a
  partition, so their order is the log's), and compaction, which keeps only the latest record
  per digest, does not change it: a replay of the compacted topic gives the same model.

Folding record by record needs what the digest's previous record added, and it is in the record
itself: the digest is the hash of the token set, so every record of one digest carries the same
tokens (a record whose tokens do not hash to its digest is refused: `invalid`). The model keeps per
digest only its label (8 bytes of the digest and one byte; about 100 bytes per learned message in a
dict), the class sizes, and the counts in the bounded `counts.TokenTable` (whose rule past its cap
depends only on the set of tokens touched, so it keeps the fold order-free). Records of another
tokenizer version are skipped (`other_version`): after a tokenizer change, learn again.

`BayesModel.start` loads the newest snapshot (`snapshot.py`) and replays only what follows it, then
follows the topic (`pipeline.tables.Follower`); it writes a snapshot every `snapshot_every`
learn events or `snapshot_seconds`, and at `close`. `classify(hashes)` is the classifier
(`bayes.classify`) over the model's counts: a lookup in fixed arrays, no network.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from consumers.stages.spam.bayes import BayesResult, BayesSettings, classify
from consumers.stages.spam.counts import HAM, SLOTS, SPAM, TokenTable
from consumers.stages.spam.snapshot import (SNAPSHOT_FORMAT, ModelState, SnapshotMeta, read_snapshot, snapshot_path,
                                            write_snapshot)
from consumers.stages.spam.tokens import TOKENIZER_VERSION, TokensInvalid, pack_tokens, token_digest, unpack_tokens
from pipeline import tables
from pipeline.bus import Topics
from pipeline.settings import Settings
from pipeline.tables import KafkaTransport, Transport
from schemas.codec import DecodeError
from schemas.events import SpamLearned, decode_event, encode_event

__all__ = ["BayesModel", "ModelStats", "LEARN", "learned_event", "publish", "kafka_transport"]

log = logging.getLogger(__name__)

LEARN = "learn"  # the table name of the learn topic
Label = Literal["spam", "ham", "forget"]
_CODES = {"spam": 1, "ham": 2, "forget": 0}
_COLUMNS = {1: SPAM, 2: HAM}
_LABELS = {1: "spam", 2: "ham"}


@dataclass(frozen=True, slots=True)
class ModelStats:
    nspam: int
    nham: int
    tokens: int  # distinct tokens held (with a count or once touched)
    counted: int  # tokens with a non-zero count
    capacity: int  # the cap on distinct tokens
    memory_bytes: int  # of the token table
    refused: int  # tokens past the cap, since start
    invalid: int  # records refused (undecodable, digest does not fit the tokens, ...)
    other_version: int  # records of another tokenizer version, skipped
    last_learned: str  # time of the newest learn event folded ("" none)
    ready: bool  # replayed up to the end of the log seen at start


def _digest_key(digest: str) -> int:
    return int(digest[:16], 16)


def learned_event(hashes: np.ndarray, label: Label, *, source: str = "cli", message_id: str = "") -> SpamLearned:
    """The learn event for a message's token hashes (`tokens.token_hashes`)."""
    return SpamLearned(message_id=message_id, digest=token_digest(hashes), label=label, tokens=pack_tokens(hashes),
                       tokenizer_version=TOKENIZER_VERSION, source=source)  # type: ignore[arg-type]


async def publish(transport: Transport, event: SpamLearned) -> asyncio.Future | None:
    """Hand a learn event to the log (open transport); None, or a future that completes once the broker has it."""
    return await transport.write(LEARN, event.digest, encode_event(event))


def kafka_transport(settings: Settings, client_id: str = "bayes") -> KafkaTransport:
    return KafkaTransport(settings.kafka, {LEARN: Topics.from_settings(settings).spam_learn}, client_id=client_id)


class BayesModel:
    """The fold of the learn topic (see the module docstring); transport None: memory only (tests)."""

    def __init__(self, settings: BayesSettings, transport: Transport | None = None, *, topic: str = "",
                 snapshot_dir: Path | None = None, write_snapshots: bool = True,
                 retry_every: float | None = None) -> None:
        self.settings = settings
        self.transport = transport
        self.topic = topic
        self.snapshot_file = snapshot_path(snapshot_dir, topic) if snapshot_dir is not None else None
        self.write_snapshots = write_snapshots and self.snapshot_file is not None
        self.retry_every = retry_every
        self._follower: tables.Follower | None = None  # made by `start`
        self._snapshotting: asyncio.Task | None = None
        self._reset()

    def _reset(self) -> None:
        self.table = TokenTable(self.settings.max_tokens)
        self.labels: dict[int, int] = {}
        self.nspam = self.nham = 0
        self.last_learned = ""
        self.invalid = self.other_version = 0
        self.unsaved = 0  # learn events folded since the last snapshot
        self._saved_at = time.monotonic()

    # -- the fold ------------------------------------------------------------------------------

    def apply(self, table: str, key: str, value: bytes | None) -> None:
        """Fold one record of the learn topic (the `pipeline.tables.Apply` of this model)."""
        try:
            if value is None:
                raise DecodeError("a tombstone (learn records are never deleted, `forget` is a record)")
            event = decode_event(value, expect=(SpamLearned,))
            assert isinstance(event, SpamLearned)
            if event.tokenizer_version != TOKENIZER_VERSION:
                self.other_version += 1
                return
            hashes = unpack_tokens(event.tokens)
            if key != event.digest or token_digest(hashes) != event.digest:
                raise DecodeError(f"digest {event.digest[:16]}… does not fit its key or its tokens")
        except (DecodeError, TokensInvalid) as exc:
            self.invalid += 1
            if self.invalid <= 10 or not self.invalid % 1000:  # a log full of them says no more than a count
                log.warning("bayes: ignoring learn record %r (%d so far): %s", key[:80], self.invalid, exc)
            return
        self.fold(event.digest, event.label, hashes)
        self.last_learned = max(self.last_learned, event.time)

    def fold(self, digest: str, label: Label, hashes: np.ndarray) -> None:
        """The digest's latest word is `label`; its tokens are `hashes` (always the same for one digest)."""
        key = _digest_key(digest)
        before, after = self.labels.get(key, 0), _CODES[label]
        buckets, slots = self.table.touch(hashes)  # every record touches: the cap's rule sees the set
        self.unsaved += 1
        if before == after:
            return
        if before:
            self.table.add(buckets, slots, _COLUMNS[before], -1)
            self._count(before, -1)
        if after:
            self.table.add(buckets, slots, _COLUMNS[after], +1)
            self._count(after, +1)
            self.labels[key] = after
        else:
            del self.labels[key]

    def _count(self, code: int, delta: int) -> None:
        if code == 1:
            self.nspam += delta
        else:
            self.nham += delta

    # -- questions -----------------------------------------------------------------------------

    def classify(self, hashes: np.ndarray) -> BayesResult | None:
        """The classifier's answer for a message's token hashes (None: the model does not vote)."""
        spam, ham = self.table.lookup(hashes)
        return classify(spam, ham, self.nspam, self.nham, self.settings)

    def probability(self, hashes: np.ndarray) -> float | None:
        result = self.classify(hashes)
        return None if result is None else result.probability

    def label_of(self, digest: str) -> str | None:
        """"spam" or "ham" when the model holds this message in that class, else None."""
        return _LABELS.get(self.labels.get(_digest_key(digest), 0))

    @property
    def ready(self) -> bool:
        return self._follower is not None and self._follower.ready

    def stats(self) -> ModelStats:
        return ModelStats(nspam=self.nspam, nham=self.nham, tokens=self.table.held(), counted=self.table.counted(),
                          capacity=self.table.capacity, memory_bytes=self.table.nbytes, refused=self.table.refused,
                          invalid=self.invalid, other_version=self.other_version, last_learned=self.last_learned,
                          ready=self.ready)

    # -- following the log ---------------------------------------------------------------------

    async def start(self, timeout: float = 15.0) -> bool:
        """Load the snapshot, replay what follows it and keep following; whether that caught up
        within `timeout` (it goes on if not: the model answers from what it has meanwhile)."""
        if self._follower is not None:
            return await self._follower.wait(timeout)
        self._follower = tables.Follower(self.transport, self.apply, label="bayes", retry_every=self.retry_every,
                                         on_caught_up=self._log_replayed, on_rewind=self._rewound)
        positions = self._restore() if self.transport is not None else None
        if self.write_snapshots and self.transport is not None:
            self._snapshotting = asyncio.create_task(self._snapshots(), name="bayes-snapshots")
        return await self._follower.start(timeout, positions)

    def _restore(self) -> tables.Positions | None:
        if self.snapshot_file is None:
            return None
        state = read_snapshot(self.snapshot_file, topic=self.topic, tokenizer_version=TOKENIZER_VERSION,
                              buckets=self.table.buckets, slots=SLOTS)
        if state is None:
            return None
        self.table.keys[...] = state.keys
        self.table.counts[...] = state.counts
        self.labels = dict(zip(state.digests.tolist(), state.labels.tolist()))
        self.nspam, self.nham = state.meta.nspam, state.meta.nham
        self.last_learned = state.meta.last_learned
        self.unsaved = 0
        log.info("bayes: snapshot %s loaded (%d spam, %d ham)", self.snapshot_file, self.nspam, self.nham)
        return state.meta.positions

    def _rewound(self) -> None:
        log.warning("bayes: snapshot %s does not fit the learn topic (recreated?): replaying it all",
                    self.snapshot_file)
        self._reset()

    def _log_replayed(self) -> None:
        log.info("bayes: learn topic replayed (%d spam, %d ham, %d tokens)", self.nspam, self.nham, self.table.held())

    async def _snapshots(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            due = self.unsaved >= self.settings.snapshot_every or (
                self.unsaved and time.monotonic() - self._saved_at >= self.settings.snapshot_seconds)
            if due and self.ready:
                try:
                    await self.snapshot()
                except OSError as exc:  # a full disk must not stop the model: it replays more next start
                    log.warning("bayes: snapshot not written: %s", exc)

    async def snapshot(self) -> Path | None:
        """Write the state and the positions it covers; the file, or None when there is nowhere to write."""
        if self.snapshot_file is None or self.transport is None or not self.ready:
            return None
        positions = await self.transport.positions()  # first: the state copied after it is as new or newer
        meta = SnapshotMeta(format=SNAPSHOT_FORMAT, tokenizer_version=TOKENIZER_VERSION, topic=self.topic,
                            buckets=self.table.buckets, nspam=self.nspam, nham=self.nham, positions=positions,
                            taken=time.time(), last_learned=self.last_learned)
        state = ModelState(meta=meta, keys=self.table.keys.copy(), counts=self.table.counts.copy(),
                           digests=np.fromiter(self.labels.keys(), np.uint64, len(self.labels)),
                           labels=np.fromiter(self.labels.values(), np.uint8, len(self.labels)))
        self.unsaved, self._saved_at = 0, time.monotonic()
        await asyncio.to_thread(write_snapshot, self.snapshot_file, state)
        return self.snapshot_file

    async def close(self) -> None:
        """Stop the periodic snapshots, write a last one (the snapshot copies the state after taking
        the positions, so the follower may still fold meanwhile), then stop following."""
        task, self._snapshotting = self._snapshotting, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task], timeout=5)
        if self.write_snapshots and self.unsaved and self.ready:
            try:
                await self.snapshot()
            except (OSError, ConnectionError) as exc:
                log.warning("bayes: last snapshot not written: %s", exc)
        if self._follower is not None:
            await self._follower.close()
        elif self.transport is not None:
            await self.transport.close()
