"""The local stack's real clamd with the project's signatures (deploy/local/clamav/), through the
client the virus stage uses, over TCP and over the unix socket."""
from __future__ import annotations

import time

import pytest

from pipeline.clients.clamav import SIZE_LIMIT, ClamdAddress, ClamdClient, ClamdTransport, ScanStatus
from pipeline.localstack.clamd import DEFAULT_STREAM_MAX_LENGTH, clamd_answers_ping, socket_path
from tests.virus_samples import ZIP_MARKER, eicar, mail_with_attachment, nested_zips, zipped


def _client(address: str, stream_max_length: int = DEFAULT_STREAM_MAX_LENGTH) -> ClamdClient:
    return ClamdClient(ClamdTransport(ClamdAddress.parse(address), 5.0), scan_timeout=60.0, chunk_size=65_536,
                       stream_max_length=stream_max_length)


@pytest.fixture(params=["tcp", "unix"])
def client(stack, request) -> ClamdClient:
    if request.param == "tcp":
        return _client(f"127.0.0.1:{stack.env['POSTSTELLE_LOCAL__CLAMD_PORT']}")
    return _client(f"unix:{socket_path(stack.home)}")


def test_clamd_answers_ping_and_version(stack):
    assert clamd_answers_ping("127.0.0.1", int(stack.env["POSTSTELLE_LOCAL__CLAMD_PORT"]))
    assert stack.status()["components"]["clamd"]["state"] == "ready"


async def test_version_names_clamav(client):
    assert (await client.version()).startswith("ClamAV ")


async def test_eicar_attachment_is_found(client):
    result = await client.scan(mail_with_attachment("eicar.com", eicar()))
    assert result.status is ScanStatus.INFECTED
    assert result.signature == "Poststelle.Test.Eicar.UNOFFICIAL"


async def test_project_signature_inside_a_zip_is_found_but_not_outside(client):
    archive = zipped({"docs/notes.txt": b"Protokoll\n" + ZIP_MARKER + b"\n" + b"Text " * 500})
    assert ZIP_MARKER not in archive  # deflated: only unpacking the zip reveals it
    result = await client.scan(mail_with_attachment("protokoll.zip", archive, content_type="application/zip"))
    assert (result.status, result.signature) == (ScanStatus.INFECTED, "Poststelle.Test.ZipMarker.UNOFFICIAL")
    plain = await client.scan(mail_with_attachment("notes.txt", b"Protokoll\n" + ZIP_MARKER + b"\n"))
    assert plain.status is ScanStatus.CLEAN  # the signature is for zip members only


async def test_clean_mail(client):
    assert (await client.scan(mail_with_attachment("bericht.pdf", b"%PDF-1.4\n" + b"0" * 20_000))).status \
        is ScanStatus.CLEAN


async def test_nesting_beyond_max_recursion_is_a_limit(client):
    result = await client.scan(mail_with_attachment("deep.zip", nested_zips(20), content_type="application/zip"))
    assert (result.status, result.signature) == (ScanStatus.LIMIT_EXCEEDED, "Heuristics.Limits.Exceeded.MaxRecursion")


async def test_clamds_stream_max_length_is_enforced(stack):
    """A client that would send more than clamd's StreamMaxLength gets clamd's size-limit answer."""
    port = stack.env["POSTSTELLE_LOCAL__CLAMD_PORT"]
    client = _client(f"127.0.0.1:{port}", stream_max_length=2 * DEFAULT_STREAM_MAX_LENGTH)
    started = time.monotonic()
    result = await client.scan(b"A" * (DEFAULT_STREAM_MAX_LENGTH + 1))
    assert (result.status, result.signature) == (ScanStatus.LIMIT_EXCEEDED, SIZE_LIMIT)
    assert result.reply.startswith("INSTREAM size limit exceeded")
    assert time.monotonic() - started < 30
