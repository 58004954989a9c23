"""The srs check: bounces to forged, expired or malformed SRS addresses are refused at RCPT with a
precise reply; valid ones and every other recipient pass; the recipient check leaves SRS addresses
to it (against the real slapd, which knows no SRS address)."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from ingress.checks import PASS, CheckContext, CheckServices
from ingress.checks.recipient import USER_UNKNOWN, RecipientCheck, RecipientSettings
from ingress.checks.srs import SRS_EXPIRED, SRS_FORGED, SRS_MALFORMED, SrsCheck, SrsCheckSettings
from pipeline.clients.directory import Directory
from pipeline.config import load_settings
from pipeline.mail.srs import DAY, srs_signer
from tests.servers import SLAPD_HOST, SlapdServer

LOCAL = frozenset({"school.test"})


def _settings(tmp_path: Path, enabled: bool = True):
    keys = tmp_path / "srs.keys"
    keys.write_text("# test key\nschluessel-1\n")
    return load_settings(None, environ={"POSTSTELLE_SRS__ENABLED": str(enabled).lower(),
                                        "POSTSTELLE_SRS__KEY_FILE": str(keys)})


def _context() -> CheckContext:
    return CheckContext(session_id="t1", client_ip="192.0.2.10", sender="")


async def test_forged_expired_and_malformed_are_refused_valid_ones_pass(tmp_path) -> None:
    settings = _settings(tmp_path)
    signer = srs_signer(settings)
    check = SrsCheck(SrsCheckSettings(), CheckServices(settings=settings, local_domains=LOCAL))
    await check.start()
    valid = signer.forward("alice@example.org")
    ctx = _context()
    assert await check.rcpt(ctx, valid) == PASS and ctx.notes["srs"] == "alice@example.org"
    forged = valid.replace("=alice@", "=mallory@")
    decision = await check.rcpt(_context(), forged)
    assert decision.reply == SRS_FORGED and decision.reason_code == "srs_forged"
    old = signer.forward("alice@example.org", now=signer_now() - 30 * DAY)
    decision = await check.rcpt(_context(), old)
    assert decision.reply == SRS_EXPIRED and decision.reason_code == "srs_expired" and "30 days old" in decision.detail
    decision = await check.rcpt(_context(), "SRS0=nonsense@school.test")
    assert decision.reply == SRS_MALFORMED
    for other in ("anna.schmidt@school.test", "SRS0=x=y=z=w@elsewhere.test", "friend@example.org"):
        assert await check.rcpt(_context(), other) == PASS


def signer_now() -> float:
    return time.time()


async def test_the_check_needs_srs_enabled(tmp_path) -> None:
    services = CheckServices(settings=_settings(tmp_path, enabled=False), local_domains=LOCAL)
    check = SrsCheck(SrsCheckSettings(), services)
    with pytest.raises(RuntimeError, match=r"\[srs\]"):
        await check.start()


async def test_the_recipient_check_leaves_srs_addresses_to_the_srs_check(tmp_path, slapd: SlapdServer) -> None:
    directory = Directory(SLAPD_HOST, slapd.port, "dc=school,dc=test", timeout=2.0)
    await directory.start()
    try:
        srs_on = RecipientCheck(RecipientSettings(), CheckServices(settings=_settings(tmp_path), directory=directory,
                                                                   local_domains=LOCAL))
        srs_off = RecipientCheck(RecipientSettings(), CheckServices(directory=directory, local_domains=LOCAL))
        address = srs_signer(_settings(tmp_path)).forward("alice@example.org")
        assert await srs_on.rcpt(_context(), address) == PASS
        assert (await srs_off.rcpt(_context(), address)).reply == USER_UNKNOWN
        assert (await srs_on.rcpt(_context(), "nobody.here@school.test")).reply == USER_UNKNOWN
    finally:
        await directory.close()
