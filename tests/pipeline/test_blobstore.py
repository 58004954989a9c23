"""The file blob store: content-addressed, and a delete that a repeated cleanup may call again."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipeline.blobstore import BlobNotFound, FileBlobStore


def test_put_get_delete_and_delete_again(tmp_path: Path) -> None:
    blobs = FileBlobStore(tmp_path)
    ref = blobs.put(b"Subject: x\r\n\r\nhello\r\n")
    assert blobs.get(ref) == b"Subject: x\r\n\r\nhello\r\n"
    assert blobs.delete(ref) is True
    assert not blobs.path_of(ref.sha256).exists()
    with pytest.raises(BlobNotFound):
        blobs.get(ref)
    assert blobs.delete(ref) is False  # gone already: not an error


def test_delete_leaves_other_blobs(tmp_path: Path) -> None:
    blobs = FileBlobStore(tmp_path)
    one, two = blobs.put(b"one"), blobs.put(b"two")
    blobs.delete(one)
    assert blobs.get(two) == b"two"


def test_the_reference_is_known_before_the_blob_is_stored(tmp_path: Path) -> None:
    blobs = FileBlobStore(tmp_path)
    data = b"Subject: early\r\n\r\nbody\r\n"
    ref = blobs.reference(data)
    assert ref.size == len(data) and not blobs.path_of(ref.sha256).exists()
    blobs.store(ref, data)
    assert blobs.get(ref) == data and blobs.put(data) == ref


def test_threads_storing_the_same_bytes_at_once_all_succeed(tmp_path: Path) -> None:
    blobs = FileBlobStore(tmp_path)
    data = b"x" * 1_000_000  # long enough for the writes to overlap
    ref = blobs.reference(data)
    with ThreadPoolExecutor(8) as pool:
        for outcome in [pool.submit(blobs.store, ref, data) for _ in range(32)]:
            outcome.result()  # (with one temporary name per process, a rename could find it gone)
    assert blobs.get(ref) == data
    assert [p.name for p in blobs.path_of(ref.sha256).parent.iterdir()] == [ref.sha256]  # no temporary left
