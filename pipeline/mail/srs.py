"""SRS, the Sender Rewriting Scheme (Shevek's "guarded" scheme, as libsrs2, Mail::SRS and pysrs have it).

A forwarded copy leaves with an envelope sender in the forwarder's domain, so SPF at the next hop
checks the forwarder, not the original sender's domain; a bounce to that address comes back here
and is sent on to the original sender:

    alice@example.org  ->  SRS0=HHHH=TT=example.org=alice@school.test

- ``TT``: the day (Unix time / 86400) modulo 1024 in two characters of the base-32 alphabet
  ``A-Z2-7`` (5 bits each); a bounce older than `max_age_days` is refused;
- ``HHHH``: the first `hash_length` characters of base64(HMAC-SHA1(key, lower(TT + domain + local))),
  compared case-insensitively (some MTAs fold the local part's case);
- an address that is already SRS0 from another forwarder becomes SRS1 (``SRS1=HHHH=host==HHHH=TT=...``),
  which reverses to that forwarder's SRS0 address, so a bounce retraces the chain.

Keys: the first signs, every key verifies (rotation: put the new key first, drop the old one once
`max_age_days` have passed). Not checked here: whether the domain is ours (the callers know that).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.settings import REPO_ROOT, ConfigError, Settings

__all__ = ["SrsSigner", "SrsError", "is_srs", "srs_signer", "BASE32"]

BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
DAY = 86_400
_SRS0 = re.compile(r"^SRS0[-+=]([^=]+)=([^=]+)=([^=]+)=(.+)$", re.IGNORECASE)
_SRS0_OPAQUE = re.compile(r"^SRS0([-+=].+)$", re.IGNORECASE)
_SRS1 = re.compile(r"^SRS1[-+=]([^=]+)=([^=]+)=([-+=].+)$", re.IGNORECASE)


class SrsError(ValueError):
    """An SRS address that must not be reversed; `reason` is "forged", "expired" or "malformed"."""

    def __init__(self, reason: str, text: str) -> None:
        super().__init__(text)
        self.reason = reason


def is_srs(address: str) -> bool:
    """An SRS0 or SRS1 address (by its local part; not verified)."""
    return address.rpartition("@")[0][:5].upper() in ("SRS0=", "SRS0-", "SRS0+", "SRS1=", "SRS1-", "SRS1+")


@dataclass(frozen=True, slots=True)
class SrsSigner:
    keys: tuple[bytes, ...]  # the first signs; all verify
    domain: str  # the forwarder's domain the rewritten addresses are in
    max_age_days: int = 21
    hash_length: int = 4

    def __post_init__(self) -> None:
        if not self.keys or not all(self.keys):
            raise ValueError("SRS needs at least one non-empty key")
        if not 1 <= self.max_age_days < 1024 or not 4 <= self.hash_length <= 28:
            raise ValueError("SRS: max_age_days must be 1..1023 and hash_length 4..28")

    def _hash(self, key: bytes, data: str, length: int) -> str:
        digest = hmac.new(key, data.lower().encode("utf-8"), hashlib.sha1).digest()
        return base64.b64encode(digest).decode("ascii")[:length]

    def _check_hash(self, given: str, data: str, address: str) -> None:
        if len(given) < self.hash_length or not any(
                hmac.compare_digest(given.lower(), self._hash(key, data, len(given)).lower()) for key in self.keys):
            raise SrsError("forged", f"{address}: the SRS hash does not verify")

    @staticmethod
    def stamp(now: float) -> str:
        day = int(now // DAY) % 1024
        return BASE32[(day >> 5) & 31] + BASE32[day & 31]

    def _check_stamp(self, stamp: str, now: float, address: str) -> None:
        if len(stamp) != 2 or any(c not in BASE32 for c in stamp.upper()):
            raise SrsError("malformed", f"{address}: the SRS timestamp {stamp!r} is not one")
        then = BASE32.index(stamp[0].upper()) * 32 + BASE32.index(stamp[1].upper())
        age = (int(now // DAY) - then) % 1024
        if age > self.max_age_days:
            raise SrsError("expired", f"{address}: the SRS address expired ({age} days old, at most "
                                      f"{self.max_age_days})")

    def forward(self, sender: str, now: float | None = None) -> str:
        """The envelope sender for a copy forwarded from `sender` ("" stays "": a bounce is never rewritten)."""
        if not sender or "@" not in sender:
            return sender
        local, _, host = sender.rpartition("@")
        key = self.keys[0]
        srs1 = _SRS1.match(local)
        if srs1:  # a later hop: keep the first hop, sign anew
            first_host, opaque = srs1.group(2), srs1.group(3)
            return f"SRS1={self._hash(key, first_host + opaque, self.hash_length)}={first_host}={opaque}@{self.domain}"
        srs0 = _SRS0_OPAQUE.match(local)
        if srs0:  # the second hop: bounces go back through the first
            opaque = srs0.group(1)
            return f"SRS1={self._hash(key, host + opaque, self.hash_length)}={host}={opaque}@{self.domain}"
        stamp = self.stamp(time.time() if now is None else now)
        return f"SRS0={self._hash(key, stamp + host + local, self.hash_length)}={stamp}={host}={local}@{self.domain}"

    def reverse(self, address: str, now: float | None = None) -> str:
        """The address a bounce to `address` goes to; `SrsError` (forged, expired, malformed) when it must not."""
        local = address.rpartition("@")[0]
        srs1 = _SRS1.match(local)
        if srs1:
            given, first_host, opaque = srs1.groups()
            self._check_hash(given, first_host + opaque, address)
            return f"SRS0{opaque}@{first_host}"
        srs0 = _SRS0.match(local)
        if srs0:
            given, stamp, host, original = srs0.groups()
            self._check_hash(given, stamp + host + original, address)
            self._check_stamp(stamp, time.time() if now is None else now, address)
            return f"{original}@{host}"
        raise SrsError("malformed", f"{address}: not an SRS0 or SRS1 address")


def srs_signer(settings: Settings) -> SrsSigner | None:
    """The site's signer from `[srs]` (None when SRS is off); the key file is read now (ConfigError
    naming `srs.key_file` when it cannot be)."""
    s = settings.srs
    if not s.enabled:
        return None
    path = Path(s.key_file) if Path(s.key_file).is_absolute() else REPO_ROOT / s.key_file
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"srs.key_file: cannot read {s.key_file}: {exc.strerror or exc}") from None
    keys = tuple(line.strip().encode() for line in lines if line.strip() and not line.startswith("#"))
    if not keys:
        raise ConfigError(f"srs.key_file: {s.key_file} holds no key")
    domain = (s.domain or (settings.ingress.local_domains or [settings.ingress.hostname])[0]).lower()
    return SrsSigner(keys=keys, domain=domain, max_age_days=s.max_age_days)
