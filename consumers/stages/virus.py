"""virus: scan every message with clamd; infected mail is rejected, mail clamd could not fully scan
is quarantined, and mail is never passed on unscanned.

The stage streams the stored message (headers and body as accepted) to clamd over INSTREAM
(`pipeline.clients.clamav`); clamd decodes the MIME parts and unpacks archives itself. Outcomes:

- ``stream: OK`` → pass, on to the next stage.
- ``<signature> FOUND`` → `rejected`, reason ``virus found: <signature>``, details
  ``{result, signature, scanner, reply, size}`` (`schemas.stages.virus.VirusDetails`).
- A scan limit: clamd's ``Heuristics.Limits.Exceeded.*`` (``AlertExceedsMax``), its
  ``INSTREAM size limit exceeded``, or a message longer than ``stream_max_length`` (not sent) →
  `quarantined` (``on_limit = "quarantine"``, the default) or `rejected` (``"reject"``). By default
  not a retry: the same message hits the same limit every time, and a retry would stall its
  partition for good. Quarantine keeps it unscanned but held for a person, never delivered.
  ``"tempfail"`` retries it like a scanner outage (for a site that raises clamd's limits and wants
  the message to wait for that; the partition waits with it).
- clamd unreachable, too slow, or answering ``ERROR`` → `TemporaryFailure`: the runner retries
  the message with backoff and commits nothing past it (fail closed). The first failure logs an
  error naming clamd's address; ``poststelle_scanner_up{stage="virus"}`` in
  its ``/metrics`` endpoint (`pipeline.metrics`) is 0 until a scan succeeds again.

The stored bytes come from the process's one `pipeline.mail.reader` (read in a worker thread, never
on the event loop). A message whose blob is gone is dead-lettered (``PoisonMessage("blob_missing")``);
a blob store I/O error is a `TemporaryFailure`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from pipeline.clients.clamav import ClamdAddress, ClamdClient, ClamdTransport, ScannerError, ScanResult, ScanStatus
from pipeline.mail.reader import message_reader
from pipeline.metrics import counter, gauge
from pipeline.registry import register
from pipeline.settings import ConfigError
from pipeline.stage import Outcome, StageContext, TemporaryFailure, Work
from schemas.codec import plain
from schemas.events import Verdict
from schemas.stages.virus import VirusDetails

__all__ = ["VirusSettings", "VirusStage", "ON_LIMIT_ACTIONS"]

log = logging.getLogger(__name__)

ON_LIMIT_ACTIONS = ("quarantine", "reject", "tempfail")
SCANNER_UP = gauge("poststelle_scanner_up", "1 while the scanner answers, 0 while it is down", ["stage"])
SCANS = counter("poststelle_scans", "messages scanned, by result", ["stage", "result"])
SCANNER_ERRORS = counter("poststelle_scanner_errors", "scans that got no verdict (retried later)", ["stage"])


@dataclass(frozen=True, slots=True)
class VirusSettings:
    # clamd: "host:port", "[ipv6]:port", "unix:PATH" or "/PATH" (a relative unix: path is under paths.home)
    address: str = "127.0.0.1:3310"
    connect_timeout: float = 5.0  # seconds to get a connection
    scan_timeout: float = 120.0  # seconds from the first byte sent to clamd's answer
    chunk_size: int = 65_536  # bytes per INSTREAM chunk
    # clamd's StreamMaxLength: a longer message is not sent, and counts as a scan limit exceeded
    stream_max_length: int = 33_554_432
    on_limit: str = "quarantine"  # quarantine | reject | tempfail: what a scan limit exceeded does

    def __post_init__(self) -> None:
        try:
            ClamdAddress.parse(self.address)
        except ValueError as exc:
            raise ConfigError(f"stages.virus.address: {exc}") from None
        for key in ("connect_timeout", "scan_timeout"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"stages.virus.{key}: expected a positive number of seconds")
        for key in ("chunk_size", "stream_max_length"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"stages.virus.{key}: expected a positive number of bytes")
        if self.on_limit not in ON_LIMIT_ACTIONS:
            raise ConfigError(f"stages.virus.on_limit: expected one of {', '.join(ON_LIMIT_ACTIONS)}, "
                              f"got {self.on_limit!r}")


@register
class VirusStage:
    name = "virus"
    description = "Scans each message with ClamAV (clamd INSTREAM); rejects infected mail, fails closed"
    Settings = VirusSettings

    def __init__(self, settings: VirusSettings, context: StageContext) -> None:
        self.settings = settings
        self.reader = message_reader(context.blobs, context.settings.message)
        address = ClamdAddress.parse(settings.address, base=context.settings.home)
        self.client = ClamdClient(ClamdTransport(address, settings.connect_timeout),
                                  scan_timeout=settings.scan_timeout, chunk_size=settings.chunk_size,
                                  stream_max_length=settings.stream_max_length)
        self.scanner = f"clamd {address}"
        # the runner's per-record timeout: a whole scan may take this long before it counts as hung
        self.timeout = settings.connect_timeout + settings.scan_timeout + 10.0
        self._up: bool | None = None

    async def start(self) -> None:
        """Ask clamd for PING once, to log and publish whether it is there; never fails the start."""
        try:
            await self.client.ping()
        except ScannerError as exc:
            self._scanner_down(exc)
        else:
            self._scanner_up()

    async def close(self) -> None:
        await self.client.close()  # ends the kept clamd sessions

    async def process(self, work: Work) -> Outcome:
        data = await self.reader.raw(work.message.blob)
        try:
            result = await self.client.scan(data)
        except ScannerError as exc:
            self._scanner_down(exc)
            SCANNER_ERRORS.labels(self.name).inc()
            raise TemporaryFailure(f"virus scanner unavailable: {exc}") from None
        self._scanner_up()
        SCANS.labels(self.name, result.status.value).inc()
        return self._outcome(result, len(data))

    # -- helpers ------------------------------------------------------------------------------

    def _outcome(self, result: ScanResult, size: int) -> Outcome:
        details = plain(VirusDetails(result=result.status.value, signature=result.signature,
                                     scanner=self.scanner, reply=result.reply, size=size))
        if result.status is ScanStatus.CLEAN:
            return Outcome(verdict=Verdict.PASS, details=details)
        if result.status is ScanStatus.INFECTED:
            return Outcome(verdict=Verdict.FAIL, details=details, reject=f"virus found: {result.signature}")
        reason = _limit_reason(result, size, self.settings.stream_max_length)
        if self.settings.on_limit == "reject":
            return Outcome(verdict=Verdict.ERROR, details=details, reject=reason)
        if self.settings.on_limit == "tempfail":
            raise TemporaryFailure(reason)  # waits, with backoff, until clamd's limits allow the scan
        return Outcome(verdict=Verdict.ERROR, details=details, quarantine=reason)

    def _scanner_down(self, exc: ScannerError) -> None:
        if self._up is not False:
            log.error("virus scanner DOWN: %s; messages wait (retried with backoff) until %s answers again",
                      exc, self.scanner)
        self._up = False
        SCANNER_UP.labels(self.name).set(0)

    def _scanner_up(self) -> None:
        if self._up is not True:
            log.info("virus scanner up: %s answers", self.scanner)
        self._up = True
        SCANNER_UP.labels(self.name).set(1)


def _limit_reason(result: ScanResult, size: int, stream_max_length: int) -> str:
    if result.signature.startswith("Heuristics."):
        return f"not fully scanned: the virus scanner stopped at a scan limit ({result.signature})"
    limit = f"{stream_max_length} bytes" if size > stream_max_length else "clamd's StreamMaxLength"
    return f"not scanned: the message ({size} bytes) is larger than the virus scanner's stream limit ({limit})"
