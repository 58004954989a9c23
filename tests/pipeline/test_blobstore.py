"""The file blob store: content-addressed, and a delete that a repeated cleanup may call again."""
from __future__ import annotations

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
