"""The clamd client against a fake clamd on loopback (TCP and unix socket)."""
from __future__ import annotations

import asyncio
import socket
import time

import pytest

from pipeline.clients.clamav import (
    MAX_IDLE_SESSIONS,
    SESSION_IDLE_SECONDS,
    SIZE_LIMIT,
    ClamdAddress,
    ClamdClient,
    ClamdTransport,
    ScannerError,
    ScanStatus,
    parse_scan_reply,
)
from tests.fake_clamd import FAKE_DEEP, FAKE_VIRUS, FakeClamd


def client_for(address: str, *, chunk_size: int = 1000, stream_max_length: int = 1_000_000,
               scan_timeout: float = 5.0, connect_timeout: float = 2.0) -> ClamdClient:
    transport = ClamdTransport(ClamdAddress.parse(address), connect_timeout)
    return ClamdClient(transport, scan_timeout=scan_timeout, chunk_size=chunk_size,
                       stream_max_length=stream_max_length)


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:3310", ClamdAddress(host="127.0.0.1", port=3310)),
    ("clamd.example:3310", ClamdAddress(host="clamd.example", port=3310)),
    ("[::1]:3310", ClamdAddress(host="::1", port=3310)),
    ("unix:/run/clamd.sock", ClamdAddress(path="/run/clamd.sock")),
    ("/run/clamd.sock", ClamdAddress(path="/run/clamd.sock")),
])
def test_addresses_parse(text, expected):
    assert ClamdAddress.parse(text) == expected


def test_relative_unix_path_is_under_the_base(tmp_path):
    assert ClamdAddress.parse("unix:clamd/clamd.sock", base=tmp_path).path == str(tmp_path / "clamd/clamd.sock")


@pytest.mark.parametrize("text", ["127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", "host:port", "unix:", ""])
def test_bad_addresses_are_refused(text):
    with pytest.raises(ValueError):
        ClamdAddress.parse(text)


@pytest.mark.parametrize(("reply", "status", "signature"), [
    ("stream: OK", ScanStatus.CLEAN, ""),
    ("stream: Win.Test.EICAR_HDB-1 FOUND", ScanStatus.INFECTED, "Win.Test.EICAR_HDB-1"),
    ("stream: Poststelle.Test.Eicar.UNOFFICIAL FOUND\0", ScanStatus.INFECTED, "Poststelle.Test.Eicar.UNOFFICIAL"),
    ("stream: Heuristics.Limits.Exceeded.MaxRecursion FOUND", ScanStatus.LIMIT_EXCEEDED,
     "Heuristics.Limits.Exceeded.MaxRecursion"),
    ("stream: Heuristics.Limits.Exceeded.MaxScanTime FOUND", ScanStatus.LIMIT_EXCEEDED,
     "Heuristics.Limits.Exceeded.MaxScanTime"),
    ("INSTREAM size limit exceeded. ERROR", ScanStatus.LIMIT_EXCEEDED, SIZE_LIMIT),
])
def test_replies_parse(reply, status, signature):
    result = parse_scan_reply(reply)
    assert (result.status, result.signature) == (status, signature)


@pytest.mark.parametrize("reply", ["stream: Can't allocate memory ERROR", "COMMAND READ TIMED OUT ERROR",
                                   "UNKNOWN COMMAND", "stream: FOUND", "", "PONG"])
def test_replies_without_a_verdict_are_scanner_errors(reply):
    with pytest.raises(ScannerError):
        parse_scan_reply(reply)


async def test_clean_infected_and_limit_over_tcp():
    async with FakeClamd() as clamd:
        client = client_for(clamd.address)
        assert (await client.scan(b"hello")).status is ScanStatus.CLEAN
        infected = await client.scan(b"x" * 5000 + FAKE_VIRUS)
        assert infected.status is ScanStatus.INFECTED and infected.signature == "Fake.Virus.Test"
        assert infected.reply == "stream: Fake.Virus.Test FOUND"
        deep = await client.scan(FAKE_DEEP)
        assert deep.status is ScanStatus.LIMIT_EXCEEDED
        assert deep.signature == "Heuristics.Limits.Exceeded.MaxRecursion"
        assert clamd.commands == [b"zIDSESSION"] + [b"zINSTREAM"] * 3  # one kept session
        assert clamd.connections == 1


async def test_the_stream_arrives_whole_in_chunks_of_the_configured_size():
    data = bytes(range(256)) * 50  # 12,800 bytes
    async with FakeClamd() as clamd:
        await client_for(clamd.address, chunk_size=4096).scan(data)
        assert clamd.streams == [data]
        assert clamd.chunk_sizes == [4096, 4096, 4096, 512]


async def test_unix_socket(tmp_path):
    async with FakeClamd(unix_path=tmp_path / "clamd.sock") as clamd:
        client = client_for(clamd.address)
        await client.ping()
        assert (await client.scan(FAKE_VIRUS)).status is ScanStatus.INFECTED
        assert await client.version() == "ClamAV 0.0-fake"


async def test_more_than_stream_max_length_is_not_sent():
    async with FakeClamd() as clamd:
        result = await client_for(clamd.address, stream_max_length=100).scan(b"x" * 101)
        assert result.status is ScanStatus.LIMIT_EXCEEDED and result.signature == SIZE_LIMIT
        assert "101 bytes" in result.reply and "100" in result.reply
        assert clamd.commands == []  # nothing went to clamd
        exact = await client_for(clamd.address, stream_max_length=100).scan(b"x" * 100)
        assert exact.status is ScanStatus.CLEAN


async def test_clamds_own_size_limit_is_a_limit_result():
    """clamd configured lower than the client: it refuses mid-stream and hangs up; the answer counts."""
    async with FakeClamd(stream_max_length=10_000) as clamd:
        result = await client_for(clamd.address, chunk_size=1000, stream_max_length=10_000_000).scan(b"y" * 3_000_000)
        assert result.status is ScanStatus.LIMIT_EXCEEDED and result.signature == SIZE_LIMIT
        assert result.reply.startswith("INSTREAM size limit exceeded")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_nobody_listening_is_a_scanner_error(tmp_path):
    with pytest.raises(ScannerError, match="cannot connect"):
        await client_for(f"127.0.0.1:{_free_port()}").scan(b"x")
    with pytest.raises(ScannerError, match="cannot connect"):
        await client_for(f"unix:{tmp_path / 'missing.sock'}").ping()


@pytest.mark.parametrize(("mode", "match"), [
    ("error", "answered an error: stream: Can't allocate memory ERROR"),
    ("hangup", "closed without an answer"),
    ("garbage", "unexpected"),
])
async def test_misbehaving_clamd_is_a_scanner_error(mode, match):
    async with FakeClamd(mode=mode) as clamd:
        with pytest.raises(ScannerError, match=match):
            await client_for(clamd.address).scan(b"data")


async def test_a_silent_clamd_times_out():
    async with FakeClamd(mode="silent") as clamd:
        started = time.monotonic()
        with pytest.raises(ScannerError, match="no answer to scan within 0.3s"):
            await client_for(clamd.address, scan_timeout=0.3).scan(b"data")
        assert time.monotonic() - started < 2


async def test_connect_timeout():
    """A listener whose backlog is full never completes the handshake: the connect timeout ends it."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        fillers = []
        try:
            for _ in range(8):  # fill the accept queue (never accepted)
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
                fillers.append(filler)
            await asyncio.sleep(0.05)
            started = time.monotonic()
            with pytest.raises(ScannerError):
                await client_for(f"127.0.0.1:{port}", connect_timeout=0.3, scan_timeout=0.3).ping()
            assert time.monotonic() - started < 2
        finally:
            for filler in fillers:
                filler.close()


# ---- kept sessions (IDSESSION) ----------------------------------------------------------------------


async def test_a_session_clamd_closed_meanwhile_is_replaced_and_the_scan_answered():
    async with FakeClamd(session_commands=2) as clamd:  # clamd drops each session at its third command
        client = client_for(clamd.address)
        results = [await client.scan(data) for data in (b"a", FAKE_VIRUS, b"c", b"d", FAKE_VIRUS)]
        assert [r.status for r in results] == [ScanStatus.CLEAN, ScanStatus.INFECTED, ScanStatus.CLEAN,
                                               ScanStatus.CLEAN, ScanStatus.INFECTED]
        assert clamd.connections == 3 and clamd.streams == [b"a", FAKE_VIRUS, b"c", b"d", FAKE_VIRUS]
        await client.close()


async def test_a_session_unused_too_long_is_not_reused():
    now = [1000.0]
    async with FakeClamd() as clamd:
        client = ClamdClient(ClamdTransport(ClamdAddress.parse(clamd.address), 2.0), scan_timeout=5.0,
                             chunk_size=1000, stream_max_length=1000, clock=lambda: now[0])
        await client.scan(b"a")
        now[0] += SESSION_IDLE_SECONDS - 0.5
        await client.scan(b"b")
        assert clamd.connections == 1
        now[0] += SESSION_IDLE_SECONDS + 0.5
        await client.scan(b"c")
        assert clamd.connections == 2
        await client.close()


async def test_concurrent_scans_each_have_a_session_and_a_few_are_kept():
    async with FakeClamd() as clamd:
        client = client_for(clamd.address)
        many = MAX_IDLE_SESSIONS + 4
        results = await asyncio.gather(*(client.scan(b"x%d" % i) for i in range(many)))
        assert all(r.status is ScanStatus.CLEAN for r in results)
        assert clamd.connections == many
        await asyncio.gather(*(client.scan(b"y%d" % i) for i in range(MAX_IDLE_SESSIONS)))
        assert clamd.connections == many  # the kept ones carried these
        await client.close()
        await asyncio.sleep(0.05)
        assert clamd.commands.count(b"zEND") == many  # the extra ones at once, the kept ones at close


@pytest.mark.parametrize(("mode", "match"), [
    ("error", "answered an error"),
    ("garbage", "unexpected"),
])
async def test_a_session_that_answered_no_verdict_is_not_kept(mode, match):
    async with FakeClamd(mode=mode) as clamd:
        client = client_for(clamd.address)
        for _ in range(2):
            with pytest.raises(ScannerError, match=match):
                await client.scan(b"data")
        assert clamd.connections == 2


async def test_clamd_gone_after_a_kept_session_is_a_scanner_error():
    clamd = FakeClamd()
    async with clamd:
        client = client_for(clamd.address)
        assert (await client.scan(b"a")).status is ScanStatus.CLEAN
    with pytest.raises(ScannerError, match="cannot connect"):  # the kept session is dead, a new one refused
        await client.scan(b"b")
