"""Messages from files, directories, mbox files and maildirs."""
from __future__ import annotations

import io

from pipeline.mail.sources import MailItem, read_messages, total_bytes

ONE = b"From: a@b.example\r\nSubject: one\r\n\r\nHallo\r\n"
TWO = b"From: c@d.example\r\nSubject: two\r\n\r\nHallo\r\n"


def origins(items: list[MailItem]) -> list[str]:
    return [i.origin.rsplit("/", 1)[-1] for i in items]


def test_a_file_is_one_message(tmp_path):
    (tmp_path / "m.eml").write_bytes(ONE)
    items = list(read_messages([tmp_path / "m.eml"]))
    assert items == [MailItem(str(tmp_path / "m.eml"), raw=ONE, size=len(ONE))]


def test_an_mbox_is_split_and_unquoted(tmp_path):
    mbox = (b"From a@b.example Mon Nov 24 09:00:00 2025\n" + ONE.replace(b"\r\n", b"\n")
            + b">From the start of a line\n>>From twice\n\n"
            + b"From c@d.example Mon Nov 24 09:01:00 2025\n" + TWO.replace(b"\r\n", b"\n"))
    (tmp_path / "box").write_bytes(mbox)
    items = list(read_messages([tmp_path / "box"]))
    assert origins(items) == ["box:1", "box:2"]
    assert items[0].raw == ONE.replace(b"\r\n", b"\n") + b"From the start of a line\n>From twice\n\n"
    assert items[1].raw == TWO.replace(b"\r\n", b"\n")


def test_a_maildir_and_its_folders(tmp_path):
    box = tmp_path / "Maildir"
    for folder in (box, box / ".Spam"):
        for sub in ("cur", "new", "tmp"):
            (folder / sub).mkdir(parents=True)
    (box / "new" / "2").write_bytes(TWO)
    (box / "cur" / "1:2,S").write_bytes(ONE)
    (box / "tmp" / "3").write_bytes(ONE)  # being delivered: not a message yet
    (box / ".Spam" / "cur" / "4:2,").write_bytes(ONE)
    (box / "dovecot.index").write_bytes(b"\x00\x01index")
    (box / "dovecot-uidlist").write_bytes(b"3 V1 N5\n")
    assert origins(list(read_messages([box]))) == ["1:2,S", "2", "4:2,"]
    assert total_bytes([box]) == 2 * len(ONE) + len(TWO)


def test_a_directory_is_walked_in_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.eml").write_bytes(TWO)
    (tmp_path / "1.eml").write_bytes(ONE)
    (tmp_path / ".hidden").write_bytes(ONE)
    assert origins(list(read_messages([tmp_path]))) == ["1.eml", "2.eml"]


def test_what_cannot_be_read_is_an_item_with_the_reason(tmp_path):
    (tmp_path / "big.eml").write_bytes(ONE * 10)
    items = list(read_messages([tmp_path / "missing", tmp_path / "big.eml"], max_bytes=len(ONE) * 5))
    assert [(i.error, i.raw) for i in items] == [("no such file or directory", b""),
                                                 (f"larger than {len(ONE) * 5} bytes", b"")]


def test_standard_input(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(ONE)))
    assert list(read_messages(["-"])) == [MailItem("-", raw=ONE, size=len(ONE))]
