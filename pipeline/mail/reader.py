"""The message of an event, read and parsed once per process, off the event loop.

Stages do not read blobs themselves: `message_reader(blobs, caps)` is the one `MessageReader` of a
process for a blob store, and its `raw(ref)` and `parsed(ref)` read the stored bytes and parse them
(`pipeline.mail.message`) in a worker thread (`asyncio.to_thread`), so a 25 MB message never blocks
the event loop. The last few messages are kept (by blob SHA-256 and size; `CACHE_MESSAGES` of them,
`CACHE_BYTES` in all), so stages chained in one process, and a retry of the same message, read and
parse it once. Concurrent requests for the same message share one read. A stage that needs only the
header and the parts asks for `parsed(ref, content=False)`; when another stage of the process then
asks for the content, it is added to the same parse (`pipeline.mail.message.with_content`).

Errors are the stage contract's: a blob that is not in the store is a `PoisonMessage`
("blob_missing": it will not appear by waiting), a storage I/O error a `TemporaryFailure` (the disk or
the mount, not the message).
"""
from __future__ import annotations

import asyncio
import weakref
from collections import OrderedDict
from dataclasses import dataclass

from pipeline.blobstore import BlobNotFound, BlobStore
from pipeline.mail.message import ParsedMessage, parse_message, with_content
from pipeline.settings import MessageSettings
from pipeline.stage import PoisonMessage, TemporaryFailure
from schemas.events import BlobRef

__all__ = ["MessageReader", "message_reader", "CACHE_MESSAGES", "CACHE_BYTES"]

CACHE_MESSAGES = 8
CACHE_BYTES = 64 * 1024 * 1024  # raw bytes plus decoded text of the cached messages

_Key = tuple[str, int]
RAW, STRUCTURE, CONTENT = 0, 1, 2  # how far a cached message is parsed


@dataclass(slots=True)
class _Entry:
    raw: bytes
    parsed: ParsedMessage | None = None

    @property
    def level(self) -> int:
        if self.parsed is None:
            return RAW
        return STRUCTURE if self.parsed.content is None else CONTENT

    @property
    def weight(self) -> int:
        texts = self.parsed.texts if self.level == CONTENT else ()
        return len(self.raw) + sum(len(t.text) + len(t.markup) for t in texts)


class MessageReader:
    """Reads and parses stored messages for the stages of one process (see the module docstring)."""

    def __init__(self, blobs: BlobStore, caps: MessageSettings | None = None, *,
                 cache_messages: int = CACHE_MESSAGES, cache_bytes: int = CACHE_BYTES) -> None:
        self.blobs = blobs
        self.caps = caps or MessageSettings()
        self.cache_messages = cache_messages
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[_Key, _Entry] = OrderedDict()
        self._loading: dict[tuple[_Key, int], asyncio.Future[_Entry]] = {}
        self.reads = 0  # blob reads, for tests and metrics
        self.parses = 0

    async def raw(self, ref: BlobRef) -> bytes:
        """The stored bytes of `ref`."""
        return (await self._entry(ref, RAW)).raw

    async def parsed(self, ref: BlobRef, *, content: bool = True) -> ParsedMessage:
        """The parsed view of the stored message `ref` (without texts, links and attachments when
        `content` is false: for stages that need the header and the parts only)."""
        parsed = (await self._entry(ref, CONTENT if content else STRUCTURE)).parsed
        assert parsed is not None
        return parsed

    async def _entry(self, ref: BlobRef, level: int) -> _Entry:
        key = (ref.sha256, ref.size)
        cached = self._cache.get(key)
        if cached is not None and cached.level >= level:
            self._cache.move_to_end(key)
            return cached
        loading = self._loading.get((key, level))
        if loading is None:
            loading = asyncio.ensure_future(self._load(ref, key, cached, level))
            self._loading[(key, level)] = loading
            loading.add_done_callback(lambda _: self._loading.pop((key, level), None))
        return await asyncio.shield(loading)

    async def _load(self, ref: BlobRef, key: _Key, cached: _Entry | None, level: int) -> _Entry:
        entry = await asyncio.to_thread(self._read_and_parse, ref, cached, level)
        self._remember(key, entry)
        return entry

    def _read_and_parse(self, ref: BlobRef, cached: _Entry | None, level: int) -> _Entry:
        """In a worker thread: the blob (unless already read) parsed as far as `level` asks."""
        if cached is None:
            try:
                cached = _Entry(self.blobs.get(ref))
            except BlobNotFound as exc:
                raise PoisonMessage("blob_missing", f"message blob {exc} is not in the store") from None
            except OSError as exc:
                raise TemporaryFailure(f"reading message blob {ref.sha256}: {exc}") from exc
            self.reads += 1
        parsed = cached.parsed
        if level >= STRUCTURE and parsed is None:
            parsed = parse_message(cached.raw, self.caps, content=level == CONTENT)
            self.parses += 1
        elif level == CONTENT and parsed is not None and parsed.content is None:
            parsed = with_content(parsed, self.caps)
            self.parses += 1
        return _Entry(cached.raw, parsed)

    def _remember(self, key: _Key, entry: _Entry) -> None:
        kept = self._cache.get(key)
        if kept is not None and kept.level > entry.level:
            entry = kept  # a load that asked for less finished after one that asked for more
        self._cache[key] = entry
        self._cache.move_to_end(key)
        total = sum(e.weight for e in self._cache.values())
        while self._cache and (len(self._cache) > self.cache_messages or total > self.cache_bytes):
            _, dropped = self._cache.popitem(last=False)
            total -= dropped.weight


_READERS: weakref.WeakKeyDictionary[BlobStore, dict[MessageSettings, MessageReader]] = weakref.WeakKeyDictionary()


def message_reader(blobs: BlobStore, caps: MessageSettings | None = None) -> MessageReader:
    """The process's one reader for `blobs` (and caps): stages of one process share its cache."""
    caps = caps or MessageSettings()
    readers = _READERS.setdefault(blobs, {})
    if caps not in readers:
        readers[caps] = MessageReader(blobs, caps)
    return readers[caps]
