"""The per-process message reader: one read and one parse per message, off the event loop."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from pipeline.blobstore import FileBlobStore
from pipeline.mail.message import ContentNotParsed
from pipeline.mail.reader import MessageReader, message_reader
from pipeline.settings import MessageSettings
from pipeline.stage import PoisonMessage, TemporaryFailure
from schemas.events import BlobRef

MAIL = b"From: a@good.test\r\nSubject: s\r\n\r\nsee http://x.test/\r\n"


@pytest.fixture
def blobs(tmp_path: Path) -> FileBlobStore:
    return FileBlobStore(tmp_path / "blobs")


async def test_a_message_is_read_and_parsed_once(blobs: FileBlobStore) -> None:
    reader = MessageReader(blobs)
    ref = blobs.put(MAIL)
    assert await reader.raw(ref) == MAIL
    parsed = await reader.parsed(ref)
    assert parsed.raw == MAIL and parsed.link_hosts == ("x.test",)
    assert await reader.parsed(ref) is parsed and await reader.raw(ref) is parsed.raw
    assert (reader.reads, reader.parses) == (1, 1)


async def test_the_content_is_added_to_the_same_parse_when_a_stage_asks_for_it(blobs: FileBlobStore) -> None:
    reader = MessageReader(blobs)
    ref = blobs.put(MAIL)
    structure = await reader.parsed(ref, content=False)
    assert structure.content is None and structure.authors.domain == "good.test"
    with pytest.raises(ContentNotParsed):
        structure.links
    full = await reader.parsed(ref)
    assert full.header is structure.header and full.parts is structure.parts  # one parse
    assert full.link_hosts == ("x.test",)
    assert await reader.parsed(ref, content=False) is full  # what is parsed further serves less too
    assert (reader.reads, reader.parses) == (1, 2)


async def test_concurrent_requests_share_one_read(blobs: FileBlobStore) -> None:
    reader = MessageReader(blobs)
    ref = blobs.put(MAIL)
    first, second = await asyncio.gather(reader.parsed(ref), reader.parsed(ref))
    assert first is second and (reader.reads, reader.parses) == (1, 1)


async def test_the_cache_keeps_the_last_few_messages(blobs: FileBlobStore) -> None:
    reader = MessageReader(blobs, cache_messages=2)
    refs = [blobs.put(MAIL + b"%d" % i) for i in range(3)]
    for ref in refs:
        await reader.parsed(ref)
    await reader.parsed(refs[2])
    assert reader.parses == 3
    await reader.parsed(refs[0])  # dropped as the oldest
    assert reader.parses == 4


async def test_a_message_larger_than_the_cache_is_not_kept(blobs: FileBlobStore) -> None:
    reader = MessageReader(blobs, cache_bytes=1000)
    ref = blobs.put(MAIL + b"x" * 2000)
    await reader.raw(ref)
    await reader.raw(ref)
    assert reader.reads == 2


async def test_one_reader_per_blob_store_and_caps(blobs: FileBlobStore, tmp_path: Path) -> None:
    assert message_reader(blobs) is message_reader(blobs, MessageSettings())
    assert message_reader(blobs, MessageSettings(max_links=5)) is not message_reader(blobs)
    assert message_reader(FileBlobStore(tmp_path / "other")) is not message_reader(blobs)
    assert message_reader(blobs, MessageSettings(max_links=5)).caps.max_links == 5


async def test_a_missing_blob_is_poison_and_an_io_error_temporary(blobs: FileBlobStore) -> None:
    reader = MessageReader(blobs)
    with pytest.raises(PoisonMessage) as missing:
        await reader.parsed(BlobRef(sha256="ab" * 32, size=10))
    assert missing.value.reason == "blob_missing"
    ref = BlobRef(sha256="cd" * 32, size=10)
    blobs.path_of(ref.sha256).mkdir(parents=True)  # a directory where the blob should be: read fails
    with pytest.raises(TemporaryFailure, match="reading message blob"):
        await reader.raw(ref)
    with pytest.raises(PoisonMessage):  # nothing failed is cached
        await reader.raw(BlobRef(sha256="ab" * 32, size=10))


async def test_reading_and_parsing_do_not_block_the_event_loop(blobs: FileBlobStore) -> None:
    heavy = (b"From: a@good.test\r\nContent-Type: text/html\r\n\r\n"
             + b'<p>text <a href="http://x.test/">link</a></p>\n' * 40_000)
    ref = blobs.put(heavy)
    reader = MessageReader(blobs)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.create_task(ticker())
    started = time.monotonic()
    await reader.parsed(ref)
    took = time.monotonic() - started
    task.cancel()
    # a parse that takes a while, while the loop went on ticking (the parse holds the GIL for up to
    # sys.getswitchinterval() at a time, so the ticks come slower than every 5 ms; inline: none)
    assert took > 0.1 and ticks >= 5
