"""Blobs appended to segment files: one write and one fdatasync for every blob waiting at that moment.

A blob in a file of its own costs an inode per message, and creating one is what a blob costs on
this kind of file system (ext4 scans past recently freed inodes; docs/performance.md): about 1 CPU-ms
per message at the ingress. `SegmentWriter` gives each writing process its own segment files under
``<root>/segments/`` and appends its blobs to the current one. Blobs that arrive while a write is
under way go together in the next write, with one `fdatasync` for all of them (group commit), in a
worker thread.

A blob's place is known before it is written: `append` gives the `BlobRef` with its segment and the
offset of its bytes at once, so its event can go to the broker while the bytes are being written; the
future it returns is done once they are durable. A record is a header (``PSB1``, the raw sha256, the
size, big-endian) and the bytes. A failed write fails every blob of its group and starts a new
segment, so no later blob lands behind a gap. A crash can leave a torn record at a segment's end: no
event refers to it (its blob was never reported durable), and a segment is never written again after
its writer is gone. Readers go through `FileBlobStore.get`, which reads the header and checks the
sha256 in it. A segment is deleted whole, by the retention (`FileBlobStore.expire`), once it is older
than the retention and none of its blobs is still needed.
"""
from __future__ import annotations

import asyncio
import os
import re
import socket
import struct
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from schemas.events import BlobRef

__all__ = ["SegmentWriter", "read_segment_blob", "segment_digests", "fsync_dir", "SEGMENTS", "SegmentCorrupt"]

SEGMENTS = "segments"  # the directory under the blob store's root
MAGIC = b"PSB1"
HEADER = struct.Struct(">4s32sQ")  # magic, sha256 (raw), size
SEGMENT_BYTES = 64 * 1024 * 1024  # a segment is closed once it holds this much
# ... or once it is this old: so a segment still being written is never as old as the retention
# (at least a day past delivery.lifetime), which deletes segments by their modification time
SEGMENT_SECONDS = 3600.0
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}")
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC


class SegmentCorrupt(LookupError):
    """The segment does not hold the blob at the offset its reference gives."""


def _path(root: Path, segment: str) -> Path:
    if not _NAME.fullmatch(segment):
        raise ValueError(f"not a segment name: {segment!r}")
    return root / SEGMENTS / segment


def read_segment_blob(root: Path, ref: BlobRef) -> bytes:
    """The bytes of `ref` from its segment; FileNotFoundError when the segment is gone."""
    fd = os.open(_path(root, ref.segment), os.O_RDONLY | os.O_CLOEXEC)
    try:
        record = os.pread(fd, HEADER.size + ref.size, ref.offset - HEADER.size)
    finally:
        os.close(fd)
    if len(record) != HEADER.size + ref.size:
        raise SegmentCorrupt(f"{ref.segment}@{ref.offset}: short read")
    magic, digest, size = HEADER.unpack_from(record)
    if magic != MAGIC or size != ref.size or digest.hex() != ref.sha256:
        raise SegmentCorrupt(f"{ref.segment}@{ref.offset}: not the record of {ref.sha256}")
    return record[HEADER.size:]


def segment_digests(path: Path) -> Iterator[str]:
    """The sha256 of every whole record in the segment file at `path` (a torn last one ends it)."""
    with open(path, "rb") as fh:
        end = os.fstat(fh.fileno()).st_size
        offset = 0
        while offset + HEADER.size <= end:
            fh.seek(offset)
            magic, digest, size = HEADER.unpack(fh.read(HEADER.size))
            if magic != MAGIC or offset + HEADER.size + size > end:
                return
            yield digest.hex()
            offset += HEADER.size + size


class SegmentWriter:
    """The segment files of one process: `append` on the event loop, the writing in one thread."""

    def __init__(self, root: Path, segment_bytes: int = SEGMENT_BYTES,
                 segment_seconds: float = SEGMENT_SECONDS) -> None:
        self.root = Path(root)
        self.segment_bytes = segment_bytes
        self.segment_seconds = segment_seconds
        self._started = 0.0  # monotonic time the current segment got its first record
        self._prefix = f"{_safe(socket.gethostname())}-{os.getpid()}-{time.time_ns()}"
        self._count = 0
        self._segment = ""
        self._end = 0  # where the next record of the current segment starts
        self._pending: list[tuple[str, int, bytes, bytes, asyncio.Future]] = []
        self._flushing: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="blob-segments")
        self._fds: dict[str, int] = {}  # used by the thread only

    def append(self, ref: BlobRef, data: bytes) -> tuple[BlobRef, asyncio.Future]:
        """Where `data` (whose reference is `ref`) will be, and a future done once it is durable."""
        if (not self._segment or self._end + HEADER.size + len(data) > self.segment_bytes and self._end
                or time.monotonic() - self._started > self.segment_seconds):
            self._next_segment()
        offset = self._end + HEADER.size
        header = HEADER.pack(MAGIC, bytes.fromhex(ref.sha256), len(data))
        self._end = offset + len(data)
        done = asyncio.get_running_loop().create_future()
        self._pending.append((self._segment, offset - HEADER.size, header, data, done))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush())
        return BlobRef(sha256=ref.sha256, size=ref.size, segment=self._segment, offset=offset), done

    async def close(self) -> None:
        """Wait for what is pending, then close the files."""
        if self._flushing is not None:
            await asyncio.shield(self._flushing)
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close_all)
        self._executor.shutdown(wait=False)

    def _next_segment(self) -> None:
        self._count += 1
        self._segment, self._end = f"{self._prefix}-{self._count}.seg", 0
        self._started = time.monotonic()

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await loop.run_in_executor(self._executor, self._write, [(s, o, h, d) for s, o, h, d, _ in batch])
            except Exception as exc:  # nothing after a gap: what was to follow fails too, and the next
                failed = {segment for segment, *_ in batch}  # blob starts a new segment
                if self._segment in failed:
                    self._next_segment()
                behind = [p for p in self._pending if p[0] in failed]
                self._pending = [p for p in self._pending if p[0] not in failed]
                for *_, done in (*batch, *behind):
                    if not done.done():
                        done.set_exception(exc)
            else:
                for *_, done in batch:
                    if not done.done():
                        done.set_result(None)

    def _write(self, batch: list[tuple[str, int, bytes, bytes]]) -> None:
        """In the thread: each segment's records in one write at their offset, then one fdatasync."""
        by_segment: dict[str, tuple[int, list[bytes]]] = {}
        for segment, start, header, data in batch:
            by_segment.setdefault(segment, (start, []))[1].extend((header, data))
        for segment, (start, parts) in by_segment.items():
            fd = self._fds.get(segment)
            if fd is None:
                fd = self._open(segment)
            payload = b"".join(parts)
            written = 0
            while written < len(payload):
                written += os.pwrite(fd, memoryview(payload)[written:], start + written)
            os.fdatasync(fd)
        for segment in [s for s in self._fds if s != self._segment]:  # done with: closed
            os.close(self._fds.pop(segment))

    def _open(self, segment: str) -> int:
        path = _path(self.root, segment)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = self._fds[segment] = os.open(path, _CREATE, 0o644)
        for directory in (path.parent, self.root):  # the new names are durable before any of its
            fsync_dir(directory)  # blobs is reported so
        return fd

    def _close_all(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def fsync_dir(path: Path | str) -> None:
    """Make the entries of directory `path` (a file created, renamed or removed in it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "_", name)[:60] or "host"
