"""Content-addressed store for raw messages (sha256), durable before any event refers to it.

Layout: ``<root>/ab/cd/<sha256>``. A blob is written to a temporary file in the same directory,
fsynced, renamed into place and the directory fsynced, so a crash never leaves a partial blob under
its final name. Storing the same bytes twice is a no-op.
"""
from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from schemas.events import BlobRef

__all__ = ["BlobStore", "BlobNotFound", "FileBlobStore"]


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


class FileBlobStore(BlobStore):
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_of(self, sha256: str) -> Path:
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise ValueError("not a sha256 hex digest")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def store(self, ref: BlobRef, data: bytes) -> None:
        path = self.path_of(ref.sha256)
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        # per process and thread: two threads storing the same bytes must not share a temporary file
        tmp = path.with_name(f".{ref.sha256}.{os.getpid()}.{threading.get_ident()}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)

    def get(self, ref: BlobRef) -> bytes:
        try:
            data = self.path_of(ref.sha256).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(ref.sha256) from None
        if len(data) != ref.size:
            raise BlobNotFound(f"{ref.sha256}: size {len(data)} != {ref.size}")
        return data

    def delete(self, ref: BlobRef) -> bool:
        path = self.path_of(ref.sha256)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        _fsync_dir(path.parent)
        return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
