"""Content-addressed store for raw messages (sha256), durable before any event refers to it.

Layout: ``<root>/ab/cd/<sha256>``. A blob is written to a temporary file in the same directory,
fsynced, renamed into place and the directory fsynced, so a crash never leaves a partial blob under
its final name. Storing the same bytes twice writes nothing; it sets the blob's modification time
to now, which is when retention (`[blobs] retention`, `stored_before`) counts from.
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from pipeline.blobsegments import SEGMENTS, SegmentCorrupt, fsync_dir, read_segment_blob, segment_digests
from schemas.events import BlobRef

__all__ = ["BlobStore", "BlobNotFound", "FileBlobStore", "LEFTOVER_AGE"]

LEFTOVER_AGE = 86_400.0  # seconds after which a temporary file is taken for a dead writer's leftover


class BlobNotFound(LookupError):
    pass


class BlobStore:
    """The interface stages and sinks use; an S3-compatible backend would implement the same."""

    def put(self, data: bytes) -> BlobRef:
        """Store `data` durably; its reference."""
        ref = self.reference(data)
        self.store(ref, data)
        return ref

    @staticmethod
    def reference(data: bytes) -> BlobRef:
        """The reference `data` will have once stored (its sha256 and size), before it is."""
        return BlobRef(sha256=hashlib.sha256(data).hexdigest(), size=len(data))

    def store(self, ref: BlobRef, data: bytes) -> None:  # pragma: no cover - interface
        """Store `data` (whose reference is `ref`) durably."""
        raise NotImplementedError

    def get(self, ref: BlobRef) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError

    def delete(self, ref: BlobRef) -> bool:  # pragma: no cover - interface
        """Remove a blob; True if it was there. A blob already gone is not an error (cleanups repeat)."""
        raise NotImplementedError

    leftovers_removed = 0  # what writers that died mid-write left, removed by `stored_before` so far

    def expire(self, cutoff: float, keep: set[str]) -> int:
        """Delete the blobs last stored before `cutoff` whose sha256 is not in `keep`; how many."""
        deleted = 0
        for ref in self.stored_before(cutoff):
            if ref.sha256 not in keep and self.delete(ref):
                deleted += 1
        return deleted

    def stored_before(self, cutoff: float) -> Iterator[BlobRef]:  # pragma: no cover - interface
        """Every blob last stored before `cutoff` (POSIX seconds), in no particular order. On the way
        it removes what writers that died mid-write left more than `LEFTOVER_AGE` ago."""
        raise NotImplementedError


class FileBlobStore(BlobStore):
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_of(self, sha256: str) -> Path:
        if not _is_digest(sha256):
            raise ValueError("not a sha256 hex digest")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def store(self, ref: BlobRef, data: bytes) -> None:
        path = self.path_of(ref.sha256)
        try:
            os.utime(path)  # stored before: nothing to write, and retention counts from now
            return
        except FileNotFoundError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        # per process and thread: two threads storing the same bytes must not share a temporary file
        tmp = path.with_name(f".{ref.sha256}.{os.getpid()}.{threading.get_ident()}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)

    def get(self, ref: BlobRef) -> bytes:
        if ref.segment:
            try:
                return read_segment_blob(self.root, ref)
            except (FileNotFoundError, SegmentCorrupt) as exc:
                raise BlobNotFound(f"{ref.sha256}: {exc}") from None
        try:
            data = self.path_of(ref.sha256).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(ref.sha256) from None
        if len(data) != ref.size:
            raise BlobNotFound(f"{ref.sha256}: size {len(data)} != {ref.size}")
        return data

    def delete(self, ref: BlobRef) -> bool:
        if ref.segment:  # its bytes go with their segment (`expire`)
            return False
        path = self.path_of(ref.sha256)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        fsync_dir(path.parent)
        return True

    def expire(self, cutoff: float, keep: set[str]) -> int:
        """Delete the blob files and the segments last written before `cutoff` that hold no blob whose
        sha256 is in `keep`; how many blobs went."""
        deleted = super().expire(cutoff, keep)
        for path in sorted((self.root / SEGMENTS).glob("*.seg")):
            try:
                if path.stat().st_mtime >= cutoff:
                    continue
                digests = list(segment_digests(path))
            except FileNotFoundError:
                continue
            if not keep.intersection(digests):
                path.unlink(missing_ok=True)
                deleted += len(digests)
        return deleted

    def stored_before(self, cutoff: float) -> Iterator[BlobRef]:
        leftover_before = time.time() - LEFTOVER_AGE
        for path, size, mtime in self._files():
            if _is_digest(path.name):
                if mtime < cutoff:
                    yield BlobRef(sha256=path.name, size=size)
            elif mtime < leftover_before and path.name.startswith(".") and path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)  # a writer died between write and rename
                self.leftovers_removed += 1

    def _files(self) -> Iterator[tuple[Path, int, float]]:
        """(path, size, modification time) of every file in the two levels of fan-out directories."""
        for top in _subdirectories(self.root):
            for leaf in _subdirectories(top):
                with os.scandir(leaf) as entries:
                    for entry in entries:
                        try:
                            if entry.is_file(follow_symlinks=False):
                                stat = entry.stat(follow_symlinks=False)
                                yield Path(entry.path), stat.st_size, stat.st_mtime
                        except FileNotFoundError:  # deleted meanwhile
                            continue


def _subdirectories(path: Path) -> list[Path]:
    try:
        with os.scandir(path) as entries:
            return sorted(Path(e.path) for e in entries if len(e.name) == 2 and e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []


def _is_digest(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)
