"""Test inputs for the virus scanner: the EICAR string, the project's zip marker, mails carrying them.

The EICAR test string is read from the hex signature in ``deploy/local/clamav/poststelle.ndb`` at
run time, so it never appears literally in the repository (which would make a scanner flag it).
"""
from __future__ import annotations

import io
import zipfile
from email.message import EmailMessage
from pathlib import Path

__all__ = ["ZIP_MARKER", "eicar", "mail_with_attachment", "nested_zips", "zipped"]

_NDB = Path(__file__).resolve().parents[1] / "deploy/local/clamav/poststelle.ndb"
# matched by Poststelle.Test.ZipMarker (deploy/local/clamav/poststelle.ldb), only inside a zip
ZIP_MARKER = b"POSTSTELLE-TEST-SIGNATURE-INSIDE-ZIP-7f3a9c1e"


def eicar() -> bytes:
    """The 68-byte EICAR anti-virus test string, from the hex of the Poststelle.Test.Eicar signature."""
    for line in _NDB.read_text(encoding="ascii").splitlines():
        name, _target, _offset, hexsig = line.split(":", 3)
        if name == "Poststelle.Test.Eicar":
            return bytes.fromhex(hexsig)
    raise LookupError(f"no Poststelle.Test.Eicar in {_NDB}")


def zipped(files: dict[str, bytes]) -> bytes:
    """A deflated zip archive of `files` (name -> content)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return out.getvalue()


def nested_zips(depth: int, inner: bytes = b"innermost\n") -> bytes:
    """`inner` as a file in a zip, that zip in a zip, ... `depth` archives deep."""
    data = zipped({"inner.txt": inner})
    for level in range(1, depth):
        data = zipped({f"level{level}.zip": data})
    return data


def mail_with_attachment(filename: str, content: bytes, *, test_id: str = "", to: str = "max.mustermann@school.test",
                         subject: str = "attachment", body: str = "Hallo, anbei die Datei.\n",
                         content_type: str = "application/octet-stream") -> bytes:
    """A multipart message (text body plus `content` base64-encoded as `filename`), CRLF line ends."""
    msg = EmailMessage()
    msg["From"] = "sender@example.org"
    msg["To"] = to
    msg["Subject"] = subject
    if test_id:
        msg["X-Test-Id"] = test_id
        msg["Message-ID"] = f"<{test_id}@example.org>"
    msg.set_content(body)
    maintype, subtype = content_type.split("/", 1)
    msg.add_attachment(content, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
