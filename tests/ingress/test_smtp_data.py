"""The block reader of DATA (`ingress.smtp_data`) against the line-by-line rules it replaces.

The reference below is aiosmtpd's DATA loop with the ingress's strict line reader, written out
plainly: lines split at CRLF, the first lone-dot line ends the data, bytes counted per line, a
leading dot removed, the first line with a NUL or bare CR/LF gives the refusal. Random streams,
cut into random pieces, must come out the same from both.
"""
from __future__ import annotations

import asyncio
import random

import pytest

from ingress.smtp import _illegal_reply
from ingress.smtp_data import DataBlock, read_data

LINE_LIMIT = 1001  # aiosmtpd's line_length_limit


def reference(stream: bytes, size_limit: int | None) -> tuple[DataBlock, bytes]:
    """(the block, what follows the dot line) by aiosmtpd's rules, lines no longer than LINE_LIMIT."""
    pos, size, lines, offence = 0, 0, [], None
    while True:
        end = stream.index(b"\r\n", pos) + 2
        line, pos = stream[pos:end], end
        if line == b".\r\n":
            break
        size += len(line)
        offence = offence or _illegal_reply(line)
        lines.append(line[1:] if line.startswith(b".") else line)
    if size_limit and size > size_limit:
        return DataBlock(b"", too_much=True, offence=offence), stream[pos:]
    return DataBlock(b"".join(lines), offence=offence), stream[pos:]


async def read_in_pieces(stream: bytes, pieces: list[int], size_limit: int | None) -> tuple[DataBlock, bytes]:
    reader = asyncio.StreamReader(limit=LINE_LIMIT)

    async def feed() -> None:
        rest = stream
        for n in pieces:
            reader.feed_data(rest[:n])
            rest = rest[n:]
            await asyncio.sleep(0)
        if rest:
            reader.feed_data(rest)

    feeder = asyncio.create_task(feed())
    block = await read_data(reader, size_limit, LINE_LIMIT, _illegal_reply)
    await feeder
    return block, bytes(reader._buffer)


def random_stream(rng: random.Random) -> bytes:
    alphabet = [b"a", b"b", b".", b"\r\n", b"\r\n", b"\r\n.", b"\r\n..", b" "]
    if rng.random() < 0.3:
        alphabet += [b"\r", b"\n", b"\x00"]
    body = b"".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 400)))
    body = body.replace(b"\r\n.\r\n", b"\r\n..\r\n")
    if body.startswith(b".\r\n"):
        body = b"." + body
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    body = body.replace(b"\r\n.\r\n", b"\r\n..\r\n")  # the data's own end comes last, once
    return body + b".\r\n" + rng.choice([b"", b"QUIT\r\n", b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n"])


@pytest.mark.parametrize("seed", range(300))
async def test_random_streams_in_random_pieces_read_as_line_by_line(seed: int) -> None:
    rng = random.Random(seed)
    stream = random_stream(rng)
    pieces = [rng.randrange(1, 40) for _ in range(rng.randrange(0, 30))]
    size_limit = rng.choice([None, 50, 200, 10_000])
    expected, rest = reference(stream, size_limit)
    block, left = await read_in_pieces(stream, pieces, size_limit)
    assert left == rest, "what follows the dot stays for the command loop"
    assert (block.content, block.too_much, block.too_long) == (expected.content, expected.too_much, expected.too_long)
    if block.too_much:  # dropped data is scanned in pieces: whether there was an offence, not which line
        assert (block.offence is None) == (expected.offence is None)
    else:
        assert block.offence == expected.offence


async def test_an_empty_message_ends_at_once_and_pipelined_commands_stay() -> None:
    block, left = await read_in_pieces(b".\r\nQUIT\r\n", [], None)
    assert block == DataBlock(b"") and left == b"QUIT\r\n"


async def test_leading_dots_are_removed_once_per_line() -> None:
    block, _ = await read_in_pieces(b"..first\r\nmid.dle\r\n...three\r\n.\r\n", [1, 1, 1], None)
    assert block.content == b".first\r\nmid.dle\r\n..three\r\n"


async def test_the_size_limit_counts_every_byte_but_the_dot_line() -> None:
    body = b"x" * 98 + b"\r\n"  # 100 bytes
    assert (await read_in_pieces(body + b".\r\n", [99], 100))[0] == DataBlock(body)
    assert (await read_in_pieces(body + b".\r\n", [99], 99))[0] == DataBlock(b"", too_much=True)


async def test_a_line_over_the_limit_is_refused_with_500() -> None:
    ok, long = b"y" * 999 + b"\r\n", b"y" * 1000 + b"\r\n"
    assert (await read_in_pieces(ok + b".\r\n", [300, 300], None))[0] == DataBlock(ok)
    assert (await read_in_pieces(long + b".\r\n", [300, 300], None))[0] == DataBlock(b"", too_long=True)


async def test_data_over_the_limit_is_not_kept() -> None:
    """Megabytes beyond the limit pass through a small buffer; the end is still found."""
    line = b"z" * 70 + b"\r\n"
    stream = line * 30_000 + b".\r\nQUIT\r\n"  # 2.2 MB
    block, left = await read_in_pieces(stream, [4096] * 600, 10_000)
    assert block == DataBlock(b"", too_much=True) and left == b"QUIT\r\n"


async def test_eof_before_the_end_raises() -> None:
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    reader.feed_data(b"half a message\r\n")
    reader.feed_eof()
    with pytest.raises(asyncio.IncompleteReadError):
        await read_data(reader, None, LINE_LIMIT, _illegal_reply)
