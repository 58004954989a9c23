"""Blobs appended to segment files: places known before the write, one write per group, read back
through the blob store, failures that start a new segment, and the retention deleting whole segments."""
from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from pipeline import blobsegments
from pipeline.blobsegments import HEADER, SEGMENTS, SegmentWriter, segment_digests
from pipeline.blobstore import BlobNotFound, BlobStore, FileBlobStore
from schemas.events import BlobRef


def _blobs(n: int, size: int = 100) -> list[bytes]:
    return [bytes([i % 251]) * size + b"%d" % i for i in range(n)]


async def _append_all(writer: SegmentWriter, datas: list[bytes]) -> list[BlobRef]:
    placed = [writer.append(BlobStore.reference(d), d) for d in datas]
    await asyncio.gather(*(done for _, done in placed))
    return [ref for ref, _ in placed]


async def test_blobs_read_back_from_their_segment_and_the_place_is_known_before_the_write(tmp_path: Path) -> None:
    store, writer = FileBlobStore(tmp_path), SegmentWriter(tmp_path)
    datas = _blobs(50)
    first, done = writer.append(BlobStore.reference(datas[0]), datas[0])
    assert (first.segment, first.offset) != ("", 0) and not done.done()  # placed, not yet written
    refs = [first, *await _append_all(writer, datas[1:])]
    await done
    assert [store.get(ref) for ref in refs] == datas
    assert len({ref.segment for ref in refs}) == 1
    assert [r.offset for r in refs] == [HEADER.size + i * (HEADER.size + 100) + sum(len(b"%d" % j) for j in range(i))
                                        for i in range(50)]
    assert list(segment_digests(tmp_path / SEGMENTS / first.segment)) == [r.sha256 for r in refs]
    await writer.close()


async def test_blobs_waiting_together_share_one_write_and_one_fdatasync(tmp_path: Path, monkeypatch) -> None:
    syncs = []
    real = os.fdatasync
    monkeypatch.setattr(blobsegments.os, "fdatasync", lambda fd: (syncs.append(fd), real(fd)))
    writer = SegmentWriter(tmp_path)
    await _append_all(writer, _blobs(1))
    await _append_all(writer, _blobs(200))  # appended at once: the first write takes one, the rest wait
    assert 2 <= len(syncs) <= 3
    await writer.close()


async def test_a_full_segment_makes_the_next_one_and_reads_never_cross_them(tmp_path: Path) -> None:
    store, writer = FileBlobStore(tmp_path), SegmentWriter(tmp_path, segment_bytes=1000)
    datas = _blobs(30)
    refs = await _append_all(writer, datas)
    assert len({r.segment for r in refs}) >= 4
    assert all(os.path.getsize(tmp_path / SEGMENTS / s) <= 1000 for s in {r.segment for r in refs})
    assert [store.get(r) for r in refs] == datas
    big = b"x" * 5000  # larger than a segment: a segment of its own
    [alone] = await _append_all(writer, [big])
    assert alone.offset == HEADER.size and store.get(alone) == big
    await writer.close()


async def test_a_failed_write_fails_its_blobs_and_the_next_go_to_a_new_segment(tmp_path: Path, monkeypatch) -> None:
    store, writer = FileBlobStore(tmp_path), SegmentWriter(tmp_path)
    [before] = await _append_all(writer, [b"before"])
    real = os.pwrite
    monkeypatch.setattr(blobsegments.os, "pwrite", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left")))
    lost, done = writer.append(BlobStore.reference(b"lost"), b"lost")
    with pytest.raises(OSError, match="No space"):
        await done
    monkeypatch.setattr(blobsegments.os, "pwrite", real)
    [after] = await _append_all(writer, [b"after"])
    assert after.segment != before.segment and store.get(after) == b"after" and store.get(before) == b"before"
    with pytest.raises(BlobNotFound):
        store.get(lost)
    await writer.close()


async def test_a_wrong_place_or_a_lost_segment_is_blob_not_found(tmp_path: Path) -> None:
    store, writer = FileBlobStore(tmp_path), SegmentWriter(tmp_path)
    a, b = await _append_all(writer, [b"alpha", b"beta"])
    await writer.close()
    for wrong in (BlobRef(sha256=a.sha256, size=a.size, segment=a.segment, offset=b.offset),
                  BlobRef(sha256=a.sha256, size=a.size, segment=a.segment, offset=a.offset + 1),
                  BlobRef(sha256=a.sha256, size=a.size + 100, segment=a.segment, offset=a.offset),
                  BlobRef(sha256=a.sha256, size=a.size, segment="gone.seg", offset=a.offset)):
        with pytest.raises(BlobNotFound):
            store.get(wrong)
    with pytest.raises(ValueError):
        store.get(BlobRef(sha256=a.sha256, size=a.size, segment="../../etc/passwd", offset=a.offset))
    assert store.delete(a) is False and store.get(a) == b"alpha"  # its bytes go with the segment


async def test_a_torn_last_record_ends_the_segment(tmp_path: Path) -> None:
    writer = SegmentWriter(tmp_path)
    refs = await _append_all(writer, [b"one", b"two"])
    await writer.close()
    path = tmp_path / SEGMENTS / refs[0].segment
    with open(path, "ab") as fh:  # a crash in the middle of the next record
        fh.write(HEADER.pack(b"PSB1", bytes(32), 1000) + b"only part")
    assert list(segment_digests(path)) == [r.sha256 for r in refs]


async def test_the_retention_deletes_a_segment_only_when_none_of_its_blobs_is_needed(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    writers = [SegmentWriter(tmp_path) for _ in range(3)]
    needed = await _append_all(writers[0], [b"held in the quarantine"])
    unneeded = await _append_all(writers[1], [b"delivered", b"bounced"])
    young = await _append_all(writers[2], [b"today"])
    for writer in writers:
        await writer.close()
    long_ago = time.time() - 40 * 86_400
    for ref in (*needed, *unneeded):
        os.utime(tmp_path / SEGMENTS / ref.segment, (long_ago, long_ago))
    file_blob = store.put(b"a file of its own")
    os.utime(store.path_of(file_blob.sha256), (long_ago, long_ago))

    assert store.expire(time.time() - 30 * 86_400, keep={needed[0].sha256}) == 3  # two in a segment, one file
    assert store.get(needed[0]) == b"held in the quarantine" and store.get(young[0]) == b"today"
    for ref in (*unneeded, file_blob):
        with pytest.raises(BlobNotFound):
            store.get(ref)


async def test_what_was_placed_behind_a_failed_write_fails_too(tmp_path, monkeypatch) -> None:
    """So that no record follows a gap."""
    store, writer = FileBlobStore(tmp_path), SegmentWriter(tmp_path)
    await _append_all(writer, [b"first"])
    real, calls = os.pwrite, []

    def fail_once(*args):
        calls.append(args[2])
        if len(calls) == 1:
            raise OSError(5, "I/O error")
        return real(*args)

    monkeypatch.setattr(blobsegments.os, "pwrite", fail_once)
    placed = [writer.append(BlobStore.reference(d), d) for d in (b"a", b"b")]  # a's write is under way ...
    await asyncio.sleep(0)
    behind = [writer.append(BlobStore.reference(d), d) for d in (b"c", b"d")]  # ... c and d wait behind it
    results = await asyncio.gather(*(done for _, done in (*placed, *behind)), return_exceptions=True)
    assert all(isinstance(r, OSError) for r in results)
    [after] = await _append_all(writer, [b"after"])
    assert after.segment != placed[0][0].segment and store.get(after) == b"after"
    segment = tmp_path / SEGMENTS / placed[0][0].segment
    assert list(segment_digests(segment)) == [BlobStore.reference(b"first").sha256]  # nothing beyond it
    await writer.close()


async def test_a_segment_is_closed_once_it_is_old_so_the_retention_never_meets_one_being_written(tmp_path) -> None:
    writer = SegmentWriter(tmp_path, segment_seconds=0.05)
    [first] = await _append_all(writer, [b"first"])
    [soon] = await _append_all(writer, [b"soon after"])
    await asyncio.sleep(0.1)
    [later] = await _append_all(writer, [b"later"])
    assert first.segment == soon.segment != later.segment
    await writer.close()
