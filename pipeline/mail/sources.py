"""Messages from files an operator names: single messages, directories, mbox files and maildirs.

`read_messages(paths)` yields one `MailItem` per message, in a stable order, reading one message at a
time (an mbox of gigabytes is streamed):

- ``-``: one message on standard input;
- a **file**: one message, or an **mbox** when it starts with a ``From `` line (mboxrd/mboxo: the
  ``From `` separator lines are dropped, one ``>`` is taken off quoted ``>From `` lines);
- a **maildir** (a directory with ``cur`` and ``new``): the messages in ``cur`` and ``new``; its
  Maildir++ folders (``.Spam``, ...) are walked too, its other files (``dovecot.index``, ...) not;
- any other **directory**: every file under it (hidden ones left out), each a message or an mbox.

A message larger than `max_bytes`, or a file that cannot be read, is an item with `error` set and
no bytes: the caller counts it as unreadable and goes on. `total_bytes(paths)` is the size of all
of it, for a progress bar.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = ["MailItem", "read_messages", "total_bytes", "MAX_MESSAGE_BYTES"]

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_MAILDIR = ("cur", "new")


@dataclass(frozen=True, slots=True)
class MailItem:
    origin: str  # the file, "<mbox>:<n>" for the n-th message of an mbox, "-" for standard input
    raw: bytes = b""
    size: int = 0  # bytes read (also for an item with an error)
    error: str = ""  # why there is no message ("" when there is one)


def _is_maildir(path: Path) -> bool:
    return all((path / name).is_dir() for name in _MAILDIR)


def _files(path: Path) -> Iterator[Path]:
    """The files a path names, in a stable order (see the module docstring)."""
    if not path.is_dir():
        yield path
        return
    if _is_maildir(path):
        for name in _MAILDIR:
            yield from sorted(p for p in (path / name).iterdir() if p.is_file() and not p.name.startswith("."))
        for folder in sorted(p for p in path.iterdir() if p.is_dir() and p.name.startswith(".") and _is_maildir(p)):
            yield from _files(folder)
        return
    for child in sorted(path.iterdir()):
        if not child.name.startswith("."):
            yield from _files(child)


def total_bytes(paths: Sequence[str | Path]) -> int:
    total = 0
    for name in paths:
        if str(name) == "-":
            continue
        for file in _files(Path(name)):
            try:
                total += file.stat().st_size
            except OSError:
                pass
    return total


def _mbox(stream: BinaryIO, origin: str, max_bytes: int) -> Iterator[MailItem]:
    """The messages of an mbox stream whose first line is a ``From `` line."""
    number, lines, size, previous_blank = 0, [], 0, True
    stream.readline()  # the first separator

    def item() -> MailItem:
        where = f"{origin}:{number}"
        if size > max_bytes:
            return MailItem(where, size=size, error=f"larger than {max_bytes} bytes")
        return MailItem(where, raw=b"".join(lines), size=size)

    for line in stream:
        if line.startswith(b"From ") and previous_blank:
            number += 1
            yield item()
            lines, size = [], 0
        else:
            size += len(line)
            if size <= max_bytes:
                stripped = line.lstrip(b">")
                lines.append(line[1:] if stripped.startswith(b"From ") and line.startswith(b">") else line)
        previous_blank = line in (b"\n", b"\r\n")
    number += 1
    yield item()


def _file(path: Path, max_bytes: int) -> Iterator[MailItem]:
    origin = str(path)
    try:
        with path.open("rb") as stream:
            if stream.read(5) == b"From ":
                stream.seek(0)
                yield from _mbox(stream, origin, max_bytes)
                return
            size = os.fstat(stream.fileno()).st_size
            if size > max_bytes:
                yield MailItem(origin, size=size, error=f"larger than {max_bytes} bytes")
                return
            stream.seek(0)
            raw = stream.read()
    except OSError as exc:
        yield MailItem(origin, error=exc.strerror or str(exc))
        return
    yield MailItem(origin, raw=raw, size=len(raw))


def read_messages(paths: Sequence[str | Path], max_bytes: int = MAX_MESSAGE_BYTES) -> Iterator[MailItem]:
    """Every message the paths name (see the module docstring)."""
    for name in paths:
        if str(name) == "-":
            raw = sys.stdin.buffer.read(max_bytes + 1)
            yield MailItem("-", raw=raw, size=len(raw)) if len(raw) <= max_bytes else \
                MailItem("-", size=len(raw), error=f"larger than {max_bytes} bytes")
            continue
        path = Path(name)
        if not path.exists():
            yield MailItem(str(path), error="no such file or directory")
            continue
        for file in _files(path):
            yield from _file(file, max_bytes)
