"""`poststelle quarantine` logic without Kafka: finding entries, extracting held parts."""
from __future__ import annotations

import base64
import dataclasses
import hashlib

import pytest

from pipeline.blobstore import FileBlobStore
from pipeline.mail.mime import leaf_at, walk
from pipeline.state.quarantine import QuarantineError, extract, find_entry
from schemas.events import Client, Envelope, Held, Quarantined, Received

PAYLOAD = b"MZ\x90\x00 the held program"
RAW = (b'From: a@ext.test\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n\r\ntext\r\n--b\r\n'
       b'Content-Type: application/octet-stream; name="a.exe"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
       + base64.encodebytes(PAYLOAD).replace(b"\n", b"\r\n") + b"--b--\r\n")


def _entries(blobs: FileBlobStore) -> tuple[Held, Quarantined]:
    message = Received(message_id="m1", envelope=Envelope(mail_from="a@ext.test", rcpt_to=["max@school.test"]),
                       client=Client(ip="192.0.2.1", port=1), blob=blobs.put(RAW))
    sha = hashlib.sha256(leaf_at(walk(RAW), "2").body(RAW)).hexdigest()
    held = Held(message_id="m1", stage="attachment", part="2", sha256=sha, filename="a.exe",
                content_type="application/octet-stream", reasons=["blocked_extension: .exe"],
                recipients=["max@school.test"], message=message)
    whole = Quarantined(message_id="m2", stage="attachment", reason="mime_too_deep: nested deeper than 20 levels",
                        recipients=["max@school.test"], message=message)
    return held, whole


def test_a_held_part_is_extracted_decoded(tmp_path):
    blobs = FileBlobStore(tmp_path)
    held, whole = _entries(blobs)
    entry = find_entry([whole, held], "m1", "2")
    assert entry is held
    assert extract(blobs, entry, "2") == PAYLOAD
    assert extract(blobs, find_entry([whole, held], "m2"), "") == RAW


def test_unknown_messages_and_parts_are_errors(tmp_path):
    blobs = FileBlobStore(tmp_path)
    held, whole = _entries(blobs)
    with pytest.raises(QuarantineError, match="not in the quarantine"):
        find_entry([held, whole], "m3")
    with pytest.raises(QuarantineError, match="has no part 7"):
        extract(blobs, held, "7")
    tampered = dataclasses.replace(held, sha256="0" * 64)
    with pytest.raises(QuarantineError, match="not the part that was held"):
        extract(blobs, tampered, "2")
