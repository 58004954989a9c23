"""The file blob store: content-addressed, and a delete that a repeated cleanup may call again."""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipeline.blobstore import LEFTOVER_AGE, BlobNotFound, FileBlobStore


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


def test_blobs_stored_before_a_time_storing_again_counts_from_now(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    old, new, again = store.put(b"old"), store.put(b"new"), store.put(b"again")
    for ref in (old, again):
        os.utime(store.path_of(ref.sha256), (1_000_000, 1_000_000))
    store.put(b"again")  # the same bytes stored again: its retention starts over
    (tmp_path / "ab").mkdir()
    (tmp_path / "ab" / "not-a-blob").mkdir()
    (tmp_path / "README").write_text("not in the fan-out")
    assert list(store.stored_before(2_000_000)) == [old]
    everything = sorted(r.sha256 for r in store.stored_before(time.time() + 60))
    assert everything == sorted(r.sha256 for r in (old, new, again))
    assert store.get(new) == b"new" and list(FileBlobStore(tmp_path / "none").stored_before(time.time())) == []


def test_temporaries_of_a_writer_that_died_go_once_they_are_a_day_old(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    ref = store.put(b"kept")
    directory = store.path_of(ref.sha256).parent
    left, recent = directory / f".{ref.sha256}.123.456.tmp", directory / f".{'0' * 64}.123.789.tmp"
    left.write_bytes(b"half a mess")
    recent.write_bytes(b"being written")
    long_ago = time.time() - LEFTOVER_AGE - 60
    os.utime(left, (long_ago, long_ago))
    assert list(store.stored_before(time.time() + 60)) == [ref]  # a temporary is never taken for a blob
    assert not left.exists() and recent.exists() and store.get(ref) == b"kept"
    assert store.leftovers_removed == 1
