"""The DATA of a message, read as blocks, not line by line.

aiosmtpd reads DATA one line at a time (`readuntil(b"\\r\\n")` per line, a coroutine call, a list
append and a join each): for a 4 KiB message about 60 of them, a tenth of the ingress's event-loop
CPU. `read_data` takes what the socket delivered in one piece and looks for the end of the data
(`CRLF . CRLF`) in it; the line rules are then checked over the whole block, in C (`bytes.count`,
`bytes.split`), with the same results aiosmtpd's loop gives:

- the data ends at the first line that is a lone dot; a message may be empty (the dot right after
  the 354);
- more than `size_limit` bytes (CRLFs counted, the final dot line not): `552`, and what came beyond
  the limit is not kept;
- a line longer than `line_limit` bytes with its CRLF: `500` (a too-long line before the size limit
  was reached wins, as in aiosmtpd, which sees it first);
- a leading dot is removed from every line (RFC 5321 4.5.2);
- the first line (split at CRLF) with a NUL, a bare CR or a bare LF gives the refusal of
  `ingress.smtp` (`_illegal_reply`), as the strict reader did per line.
"""
from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["DataBlock", "read_data"]

END = b"\r\n.\r\n"
_BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")


@dataclass(slots=True)
class DataBlock:
    content: bytes  # dot-unstuffed; empty when refused
    too_much: bool = False  # over size_limit: 552
    too_long: bool = False  # a line over line_limit: 500
    offence: str | None = None  # the first line's refusal for a NUL or bare CR/LF


async def read_data(reader: asyncio.StreamReader, size_limit: int | None, line_limit: int,
                    illegal_reply: Callable[[bytes], str | None]) -> DataBlock:
    """Read up to and including the lone dot line from `reader`; leave what follows in it.

    Uses the StreamReader's buffer directly (as its own `readuntil` does), so pipelined commands
    after the dot stay where the session's command loop reads them. Over `size_limit`, the data is
    scanned for offences and dropped as it comes (a tail is kept to find the end in).
    """
    data = bytearray(b"\r\n")  # the CRLF that ended the DATA command: the end may come at once
    start = 2  # where the data proper starts in `data`
    searched = dropped = 0
    too_long, offence = False, None
    while True:
        buffer: bytearray = reader._buffer  # type: ignore[attr-defined]
        if buffer:
            data += buffer
            buffer.clear()
            reader._maybe_resume_transport()  # type: ignore[attr-defined]
            end = data.find(END, searched)
            if end >= 0:
                buffer += data[end + len(END):]  # pipelined commands after the dot
                raw = bytes(memoryview(data)[start:end + 2])
                if not dropped:
                    return _block(raw, size_limit, line_limit, illegal_reply)
                offence = offence or _first_offence(raw, illegal_reply)
                return DataBlock(b"", too_much=not too_long, too_long=too_long, offence=offence)
            searched = max(0, len(data) - len(END) + 1)
            if size_limit and dropped + len(data) - start - len(END) > size_limit:  # too much, whatever comes
                cut = len(data) - (len(END) - 1)
                if data[cut - 1] == 13:  # never between CR and LF: the LF would look bare
                    cut -= 1
                segment = bytes(memoryview(data)[start:cut])
                too_long = too_long or (not dropped and _longest_line(segment) > line_limit)
                offence = offence or _first_offence(segment, illegal_reply)
                dropped += cut - start
                del data[:cut]
                start = searched = 0
        exception = reader.exception()
        if exception is not None:
            raise exception
        if reader.at_eof():  # the session loop is cancelled on EOF; this is the guard
            raise asyncio.IncompleteReadError(bytes(data[start:]), None)
        await reader._wait_for_data("read_data")  # type: ignore[attr-defined]


def _block(raw: bytes, size_limit: int | None, line_limit: int,
           illegal_reply: Callable[[bytes], str | None]) -> DataBlock:
    offence = _first_offence(raw, illegal_reply)
    too_long = _longest_line(raw) > line_limit
    if too_long or (size_limit and len(raw) > size_limit):
        return DataBlock(b"", too_much=not too_long, too_long=too_long, offence=offence)
    content = raw.replace(b"\r\n.", b"\r\n")
    if content.startswith(b"."):
        content = content[1:]
    return DataBlock(content, offence=offence)


def _longest_line(raw: bytes) -> int:
    """The longest line's length with its line ending (lines split at LF)."""
    return max(map(len, raw.split(b"\n"))) + 1 if raw else 0


def _first_offence(raw: bytes, illegal_reply: Callable[[bytes], str | None]) -> str | None:
    """The refusal for the first line of `raw` (split at CRLF) with a NUL, a bare CR or a bare LF."""
    crlf = raw.count(b"\r\n")
    if b"\x00" not in raw and raw.count(b"\r") == crlf and raw.count(b"\n") == crlf:
        return None
    bare = _BARE.search(raw)
    first = min(p for p in (raw.find(b"\x00"), bare.start() if bare else -1) if p >= 0)
    line_start, line_end = raw.rfind(b"\r\n", 0, first), raw.find(b"\r\n", first)
    return illegal_reply(raw[line_start + 2 if line_start >= 0 else 0:line_end + 2 if line_end >= 0 else len(raw)])
