"""List a zip archive's entries from its central directory, without extracting anything.

`list_zip(data, max_entries)` reads the end-of-central-directory record (and its zip64 form), refuses
to read more than `max_entries` entries (the declared count is checked before any entry is parsed),
and returns each entry's raw name as stored (not truncated at a NUL, unlike `zipfile`), the Info-ZIP
Unicode path when there is one, and the declared compressed and uncompressed sizes (zip64 extra
fields honoured). Anything that does not parse raises `BrokenZip` with the reason.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["ZipEntry", "ZipListing", "BrokenZip", "list_zip", "ZIP_MAGIC"]

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header, or an empty archive
_EOCD = b"PK\x05\x06"
_EOCD64_LOCATOR = b"PK\x06\x07"
_EOCD64 = b"PK\x06\x06"
_CENTRAL = b"PK\x01\x02"
_EOCD_SIZE = 22
_CENTRAL_SIZE = 46
_MAX_COMMENT = 65_535
_UTF8_FLAG = 0x800
_ZIP64_EXTRA = 0x0001
_UNICODE_PATH_EXTRA = 0x7075


class BrokenZip(ValueError):
    """Not a readable zip archive (the reason says where it broke)."""


@dataclass(frozen=True, slots=True)
class ZipEntry:
    name: str  # as stored (UTF-8 when flagged so, else CP437)
    unicode_name: str  # Info-ZIP Unicode Path extra field, "" when absent
    compressed_size: int
    size: int  # declared uncompressed size
    encrypted: bool

    @property
    def is_dir(self) -> bool:
        return self.name.endswith("/")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(n for n in (self.name, self.unicode_name) if n))


@dataclass(frozen=True, slots=True)
class ZipListing:
    declared: int  # entries the archive says it has
    entries: list[ZipEntry]  # empty when `declared` is over the limit (nothing was parsed)


def _end_record(data: bytes) -> tuple[int, int, int]:
    """(entries, central directory size, end-record offset) from the (zip64) end record."""
    at = data.rfind(_EOCD, max(0, len(data) - _EOCD_SIZE - _MAX_COMMENT))
    if at < 0 or len(data) - at < _EOCD_SIZE:
        raise BrokenZip("no end of central directory record")
    _, _, _, _, entries, cd_size, cd_offset, _ = struct.unpack_from("<4sHHHHIIH", data, at)
    if entries != 0xFFFF and cd_size != 0xFFFFFFFF and cd_offset != 0xFFFFFFFF:
        return entries, cd_size, at
    locator = at - 20
    if locator < 0 or data[locator:locator + 4] != _EOCD64_LOCATOR:
        raise BrokenZip("zip64 end record locator missing")
    _, _, record_offset, _ = struct.unpack_from("<4sIQI", data, locator)
    record = locator - 56  # the zip64 end record directly precedes its locator (before any prefix shift)
    if record < 0 or data[record:record + 4] != _EOCD64:
        if record_offset + 56 > len(data) or data[record_offset:record_offset + 4] != _EOCD64:
            raise BrokenZip("zip64 end of central directory record missing")
        record = record_offset
    _, _, _, _, _, _, _, entries64, cd_size64, _ = struct.unpack_from("<4sQHHIIQQQQ", data, record)
    return entries64, cd_size64, record


def _zip64_sizes(extra: bytes, compressed: int, size: int) -> tuple[int, int]:
    """The real sizes when the 32-bit fields hold 0xFFFFFFFF (zip64 extra field, uncompressed first)."""
    for tag, body in _extra_fields(extra):
        if tag != _ZIP64_EXTRA:
            continue
        pos = 0
        if size == 0xFFFFFFFF and pos + 8 <= len(body):
            (size,) = struct.unpack_from("<Q", body, pos)
            pos += 8
        if compressed == 0xFFFFFFFF and pos + 8 <= len(body):
            (compressed,) = struct.unpack_from("<Q", body, pos)
    return compressed, size


def _extra_fields(extra: bytes):
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, pos)
        yield tag, extra[pos + 4:pos + 4 + length]
        pos += 4 + length


def _unicode_path(extra: bytes) -> str:
    for tag, body in _extra_fields(extra):
        if tag == _UNICODE_PATH_EXTRA and len(body) > 5:
            return body[5:].decode("utf-8", "replace")
    return ""


def list_zip(data: bytes, max_entries: int) -> ZipListing:
    """The archive's entries (central directory only); raises `BrokenZip`."""
    declared, cd_size, end_at = _end_record(data)
    if declared > max_entries:
        return ZipListing(declared=declared, entries=[])
    pos = end_at - cd_size  # tolerant of data prepended to the archive (self-extractors)
    if pos < 0:
        raise BrokenZip("central directory lies before the start of the data")
    entries: list[ZipEntry] = []
    for index in range(declared):
        if data[pos:pos + 4] != _CENTRAL or pos + _CENTRAL_SIZE > end_at:
            raise BrokenZip(f"central directory entry {index + 1} of {declared} is missing or corrupt")
        fields = struct.unpack_from("<4s6H3I5HII", data, pos)
        flags, compressed, size = fields[3], fields[8], fields[9]
        name_len, extra_len, comment_len = fields[10], fields[11], fields[12]
        name_end = pos + _CENTRAL_SIZE + name_len
        if name_end + extra_len + comment_len > end_at:
            raise BrokenZip(f"central directory entry {index + 1} runs past the directory")
        raw_name = data[pos + _CENTRAL_SIZE:name_end]
        extra = data[name_end:name_end + extra_len]
        compressed, size = _zip64_sizes(extra, compressed, size)
        name = raw_name.decode("utf-8", "replace") if flags & _UTF8_FLAG else raw_name.decode("cp437")
        entries.append(ZipEntry(name=name, unicode_name=_unicode_path(extra), compressed_size=compressed,
                                size=size, encrypted=bool(flags & 0x1)))
        pos = name_end + extra_len + comment_len
    return ZipListing(declared=declared, entries=entries)
