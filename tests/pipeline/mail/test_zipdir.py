"""Listing zip archives from the central directory: names, sizes, limits, broken archives."""
from __future__ import annotations

import io
import struct
import zipfile

import pytest

from pipeline.mail.zipdir import BrokenZip, list_zip


def make_zip(entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_entries_match_what_zipfile_reads():
    data = make_zip({"docs/rechnung.pdf": b"%PDF" * 100, "ordner/": b"", "Prüfung.txt": b"x",
                     "script.js": b"alert(1)"})
    listing = list_zip(data, 100)
    assert listing.declared == 4
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        expected = [(i.filename, i.compress_size, i.file_size) for i in archive.infolist()]
    assert [(e.name, e.compressed_size, e.size) for e in listing.entries] == expected
    assert [e.is_dir for e in listing.entries] == [False, True, False, False]


def test_a_nul_in_a_name_is_kept_not_truncated():
    data = make_zip({"rechnung.pdfX.js": b"x"}).replace(b"rechnung.pdfX.js", b"rechnung.pdf\x00.js")
    (entry,) = list_zip(data, 10).entries
    assert entry.name == "rechnung.pdf\x00.js"


def test_over_the_entry_limit_nothing_is_parsed():
    data = make_zip({f"f{i}.txt": b"" for i in range(50)})
    listing = list_zip(data, 10)
    assert listing.declared == 50 and listing.entries == []


def test_prepended_data_is_tolerated():
    data = b"MZ self-extractor stub" * 10 + make_zip({"a.txt": b"a"})
    assert [e.name for e in list_zip(data, 10).entries] == ["a.txt"]


def test_declared_sizes_give_the_compression_ratio():
    data = make_zip({"zeros.bin": b"\0" * 2_000_000})
    (entry,) = list_zip(data, 10).entries
    assert entry.size == 2_000_000 and entry.size / entry.compressed_size > 500


def test_zip64_sizes_are_read_from_the_extra_field():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        with archive.open("big.bin", "w", force_zip64=True) as member:
            member.write(b"x" * 10)
    (entry,) = list_zip(buffer.getvalue(), 10).entries
    assert entry.size == 10


def test_unicode_path_extra_field_is_read():
    name = "böse.exe".encode()
    extra = struct.pack("<HHB", 0x7075, 5 + len(name), 1) + struct.pack("<I", 0) + name
    info = zipfile.ZipInfo("harmless.txt")
    info.extra = extra
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(info, b"x")
    (entry,) = list_zip(buffer.getvalue(), 10).entries
    assert entry.names == ("harmless.txt", "böse.exe")


@pytest.mark.parametrize("mangle, why", [
    (lambda d: b"not a zip at all", "end of central directory"),
    (lambda d: d[: len(d) // 2], "end of central directory"),
    (lambda d: d.replace(b"PK\x01\x02", b"XX\x01\x02"), "missing or corrupt"),
])
def test_broken_archives_raise_with_the_reason(mangle, why):
    data = make_zip({"a.txt": b"hello" * 100, "b.txt": b"world"})
    with pytest.raises(BrokenZip, match=why):
        list_zip(mangle(data), 10)


def test_a_directory_size_pointing_before_the_data_is_broken():
    data = bytearray(make_zip({"a.txt": b"a"}))
    end = data.rfind(b"PK\x05\x06")
    struct.pack_into("<I", data, end + 12, 10_000_000)
    with pytest.raises(BrokenZip, match="before the start"):
        list_zip(bytes(data), 10)
