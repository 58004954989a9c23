"""The virus stage, through the real stage runner, against a fake clamd on loopback."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
from aiokafka.structs import ConsumerRecord

from consumers.stages.virus import VirusSettings, VirusStage
from pipeline.blobstore import FileBlobStore
from pipeline.config import load_settings
from pipeline.metrics import REGISTRY, sample
from pipeline.runner import StageRunner
from pipeline.settings import ConfigError, Settings
from pipeline.stage import StageContext, TemporaryFailure, Work
from schemas.events import (
    BlobRef,
    Client,
    Deadlettered,
    Envelope,
    Quarantined,
    Received,
    Rejected,
    StageResult,
    Verdict,
    encode_event,
)
from schemas.ids import new_id
from tests.fake_clamd import FAKE_DEEP, FAKE_VIRUS, FakeClamd

CLEAN = b"From: a@example.org\r\nTo: max.mustermann@school.test\r\nSubject: hi\r\n\r\nHallo.\r\n"


def _settings(home: Path, address: str, **virus: str) -> Settings:
    """Settings with the virus stage at `address`; `virus` overrides more of its keys (ADDRESS too)."""
    env = {"POSTSTELLE_HOME": str(home), "POSTSTELLE_TOPOLOGY__STAGES": "virus,route",
           "POSTSTELLE_STAGES__VIRUS__ADDRESS": address, "POSTSTELLE_STAGES__VIRUS__CONNECT_TIMEOUT": "1",
           "POSTSTELLE_STAGES__VIRUS__SCAN_TIMEOUT": "1"}
    env.update({f"POSTSTELLE_STAGES__VIRUS__{k.upper()}": v for k, v in virus.items()})
    return load_settings(None, environ=env)


def _runner(home: Path, address: str, **virus: str) -> tuple[StageRunner, FileBlobStore]:
    settings = _settings(home, address, **virus)
    blobs = FileBlobStore(home / "blobs")
    stage = VirusStage(settings.stage_settings("virus"), StageContext(settings=settings, blobs=blobs))
    return StageRunner(settings, stage), blobs


def _record(event: Received) -> ConsumerRecord:
    value = encode_event(event)
    return ConsumerRecord(topic="poststelle.received", partition=0, offset=3, timestamp=1_700_000_000_000,
                          timestamp_type=0, key=b"k", value=value, checksum=None, serialized_key_size=1,
                          serialized_value_size=len(value), headers=[])


def _received(blob: BlobRef) -> Received:
    return Received(message_id=new_id(), envelope=Envelope(mail_from="a@example.org",
                                                           rcpt_to=["max.mustermann@school.test"]),
                    client=Client(ip="192.0.2.7", port=40000, helo="mail.example.org"), blob=blob)


def _without_outcome(outputs: list) -> list:
    """The stage's own outputs; a terminal one comes with an `outcome` for the waiting ingress."""
    return [o for o in outputs if o.topic != "poststelle.outcomes"]


def _up() -> float | None:
    return REGISTRY.get_sample_value("poststelle_scanner_up", {"stage": "virus"})


def _scans(result: str) -> float:
    return sample("poststelle_scans_total", {"stage": "virus", "result": result})


async def test_clean_message_passes_with_the_scan_recorded(tmp_path):
    async with FakeClamd() as clamd:
        runner, blobs = _runner(tmp_path, clamd.address)
        await runner.start()
        event = _received(blobs.put(CLEAN))
        clean = _scans("clean")
        (out,) = _without_outcome(await runner.outputs_of(_record(event)))
        await runner.close()
    assert out.topic == "poststelle.checked.virus" and isinstance(out.event, StageResult)
    result = out.event.result
    assert result.stage == "virus" and result.verdict is Verdict.PASS
    assert result.details == {"result": "clean", "signature": "", "scanner": f"clamd {clamd.address}",
                              "reply": "stream: OK", "size": len(CLEAN)}
    assert clamd.streams == [CLEAN]  # the stored message, byte for byte
    assert _up() == 1
    assert _scans("clean") == clean + 1


async def test_infected_message_is_rejected_with_the_signature(tmp_path):
    async with FakeClamd() as clamd:
        runner, blobs = _runner(tmp_path, clamd.address)
        event = _received(blobs.put(CLEAN + FAKE_VIRUS + b"\r\n"))
        infected = _scans("infected")
        (out,) = _without_outcome(await runner.outputs_of(_record(event)))
    assert out.topic == "poststelle.rejected" and isinstance(out.event, Rejected)
    assert out.event.stage == "virus" and out.event.reason == "virus found: Fake.Virus.Test"
    assert out.event.recipients == ["max.mustermann@school.test"]
    (result,) = out.event.results
    assert result.verdict is Verdict.FAIL
    assert result.details["signature"] == "Fake.Virus.Test" and result.details["scanner"].startswith("clamd ")
    assert _scans("infected") == infected + 1


async def test_scan_limit_is_quarantined_not_retried(tmp_path):
    async with FakeClamd() as clamd:
        runner, blobs = _runner(tmp_path, clamd.address)
        (out,) = _without_outcome(await runner.outputs_of(_record(_received(blobs.put(CLEAN + FAKE_DEEP)))))
    assert out.topic == "poststelle.quarantine" and isinstance(out.event, Quarantined)
    assert "Heuristics.Limits.Exceeded.MaxRecursion" in out.event.reason
    assert out.event.reason.startswith("not fully scanned")
    assert out.event.results[0].details["result"] == "limit_exceeded"


async def test_message_over_the_stream_limit_is_quarantined_unsent(tmp_path):
    async with FakeClamd() as clamd:
        runner, blobs = _runner(tmp_path, clamd.address, stream_max_length="100")
        big = CLEAN + b"x" * 200
        (out,) = _without_outcome(await runner.outputs_of(_record(_received(blobs.put(big)))))
    assert isinstance(out.event, Quarantined)
    assert out.event.reason == (f"not scanned: the message ({len(big)} bytes) is larger than the virus "
                                "scanner's stream limit (100 bytes)")
    assert clamd.commands == []


async def test_on_limit_reject(tmp_path):
    async with FakeClamd() as clamd:
        runner, blobs = _runner(tmp_path, clamd.address, on_limit="reject")
        (out,) = _without_outcome(await runner.outputs_of(_record(_received(blobs.put(CLEAN + FAKE_DEEP)))))
    assert isinstance(out.event, Rejected) and "MaxRecursion" in out.event.reason


async def test_on_limit_tempfail_makes_the_message_wait(tmp_path):
    async with FakeClamd() as clamd:
        runner, blobs = _runner(tmp_path, clamd.address, on_limit="tempfail")
        with pytest.raises(TemporaryFailure, match="MaxRecursion"):
            await runner.outputs_of(_record(_received(blobs.put(CLEAN + FAKE_DEEP))))


@pytest.mark.parametrize("mode", ["error", "hangup", "silent"])
async def test_scanner_trouble_is_a_temporary_failure_and_marks_it_down(tmp_path, mode, caplog):
    async with FakeClamd(mode=mode) as clamd:
        runner, blobs = _runner(tmp_path, clamd.address)
        event = _received(blobs.put(CLEAN))
        errors = sample("poststelle_scanner_errors_total", {"stage": "virus"})
        with caplog.at_level(logging.ERROR, logger="consumers.stages.virus"):
            for _ in range(2):
                with pytest.raises(TemporaryFailure, match="virus scanner unavailable"):
                    await runner.outputs_of(_record(event))  # the runner re-raises: the record is retried
        await runner.close()
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1  # logged once
    assert "virus scanner DOWN" in caplog.records[0].message and clamd.address in caplog.records[0].message
    assert _up() == 0
    assert sample("poststelle_scanner_errors_total", {"stage": "virus"}) == errors + 2


async def test_scanner_down_then_back(tmp_path, caplog):
    sock = tmp_path / "clamd.sock"
    runner, blobs = _runner(tmp_path, f"unix:{sock}")
    event = _received(blobs.put(CLEAN + FAKE_VIRUS))
    await runner.start()  # nobody listens yet: the start does not fail
    assert _up() == 0
    with pytest.raises(TemporaryFailure, match="cannot connect"):
        await runner.outputs_of(_record(event))
    async with FakeClamd(unix_path=sock):
        with caplog.at_level(logging.INFO, logger="consumers.stages.virus"):
            (out,) = _without_outcome(await runner.outputs_of(_record(event)))
    assert isinstance(out.event, Rejected)
    assert any("virus scanner up" in r.message for r in caplog.records)
    assert _up() == 1


async def test_missing_blob_is_dead_lettered(tmp_path):
    async with FakeClamd() as clamd:
        runner, _ = _runner(tmp_path, clamd.address)
        (out,) = _without_outcome(await runner.outputs_of(_record(_received(BlobRef(sha256="ab" * 32, size=10)))))
    assert isinstance(out.event, Deadlettered) and out.event.reason == "blob_missing"


async def test_process_directly(tmp_path):
    """The stage contract without the runner: `process` raises TemporaryFailure itself."""
    settings = _settings(tmp_path, "127.0.0.1:1")
    blobs = FileBlobStore(tmp_path / "blobs")
    stage = VirusStage(settings.stage_settings("virus"), StageContext(settings=settings, blobs=blobs))
    with pytest.raises(TemporaryFailure):
        await stage.process(Work(message=_received(blobs.put(CLEAN))))


@pytest.mark.parametrize(("key", "value", "match"), [
    ("ADDRESS", "nowhere", "stages.virus.address"),
    ("on_limit", "ignore", "stages.virus.on_limit"),
    ("chunk_size", "0", "stages.virus.chunk_size"),
    ("scan_timeout", "0", "stages.virus.scan_timeout"),
])
def test_bad_settings_are_refused(tmp_path, key, value, match):
    with pytest.raises(ConfigError, match=match):
        _settings(tmp_path, "127.0.0.1:3310", **{key: value})


def test_defaults():
    assert VirusSettings().address == "127.0.0.1:3310"
    assert VirusSettings().on_limit == "quarantine"
