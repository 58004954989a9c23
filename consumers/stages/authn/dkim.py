"""DKIM verification (RFC 6376, RFC 8463 ed25519, RFC 8301 algorithm rules) of every signature.

dkimpy does the canonicalisation, hashing and signature check; keys come from our async resolver
(`<s>._domainkey.<d>` TXT), fetched before dkimpy runs and handed to it through its `dnsfunc`, so
dkimpy never touches the network. Results per signature (RFC 8601 2.7.1):

    pass       the signature verifies
    fail       it does not (body hash or header signature mismatch)
    policy     it verifies, but only over part of the body (l= shorter than the body) and
               partial bodies are not accepted (the default: appended text would ride on it)
    neutral    not evaluated: more signatures than `max_signatures`
    permerror  the signature or its key cannot be used (missing tags, expired, unknown or
               mismatched algorithm, rsa-sha1, key missing, revoked, shorter than 1024 bits)
    temperror  the key lookup failed temporarily
"""
from __future__ import annotations

import binascii
import logging
import re
from dataclasses import dataclass
from typing import Literal

import dkim as dkimpy

from pipeline.clients.dns import BadName, Resolver

__all__ = ["DkimResult", "DkimOutcome", "verify_signatures", "ACCEPTED_ALGORITHMS"]

DkimResult = Literal["pass", "fail", "policy", "neutral", "permerror", "temperror"]
ACCEPTED_ALGORITHMS = {b"rsa-sha256": b"rsa", b"ed25519-sha256": b"ed25519"}
MIN_RSA_BITS = 1024

_quiet = logging.getLogger(__name__ + ".dkimpy")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False
_SIGNATURE_FIELD = re.compile(rb"^dkim-signature:", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True, slots=True)
class DkimOutcome:
    result: DkimResult
    domain: str = ""  # d=
    selector: str = ""  # s=
    algorithm: str = ""  # a=
    signature_start: str = ""  # the first 8 characters of b=, to tell signatures apart (RFC 6008)
    reason: str = ""


class _Unusable(Exception):
    """A signature that cannot be verified: its result and why."""

    def __init__(self, result: DkimResult, reason: str) -> None:
        super().__init__(reason)
        self.result = result
        self.reason = reason


def _text(value: bytes | None) -> str:
    return (value or b"").decode("ascii", "replace")


def _crlf(raw: bytes) -> bytes:
    return raw if b"\r\n" in raw else raw.replace(b"\n", b"\r\n")


async def verify_signatures(resolver: Resolver, raw: bytes, *, max_signatures: int = 10,
                            allow_partial_body: bool = False) -> list[DkimOutcome]:
    """One outcome per DKIM-Signature field, top to bottom; [] when the message has none."""
    if not _SIGNATURE_FIELD.search(raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]):
        return []
    try:
        message = dkimpy.DKIM(_crlf(raw), logger=_quiet, minkey=MIN_RSA_BITS)
    except Exception as exc:  # dkimpy refuses some malformed messages while parsing
        return [DkimOutcome("permerror", reason=f"message cannot be parsed: {type(exc).__name__}")]
    count = sum(1 for name, _ in message.headers if name.lower() == b"dkim-signature")
    outcomes = []
    for index in range(count):
        if index >= max_signatures:
            outcomes.append(DkimOutcome("neutral", reason=f"not evaluated: over {max_signatures} signatures"))
            continue
        outcomes.append(await _verify_one(resolver, message, index, allow_partial_body))
    return outcomes


async def _verify_one(resolver: Resolver, message: dkimpy.DKIM, index: int,
                      allow_partial_body: bool) -> DkimOutcome:
    try:
        prepared = message.verify_headerprep(index)
    except Exception as exc:  # MessageFormatError, ValidationError (expired, bad tags) and odd input
        return DkimOutcome("permerror", reason=f"unusable signature: {exc}")
    sig, include_headers, signature_fields = prepared
    found = DkimOutcome("permerror", domain=_text(sig.get(b"d")).lower(), selector=_text(sig.get(b"s")),
                        algorithm=_text(sig.get(b"a")), signature_start=_text(re.sub(rb"\s+", b"", sig.get(b"b", b""))[:8]))
    try:
        key_type = ACCEPTED_ALGORITHMS.get(sig[b"a"])
        if key_type is None:
            raise _Unusable("permerror", f"algorithm {found.algorithm} is not accepted (RFC 8301)")
        record = await _key_record(resolver, found.selector, found.domain)
        _check_key(record, key_type, found)
        verified = _check_signature(message, sig, include_headers, signature_fields[index], record)
        if not verified:
            raise _Unusable("fail", "signature does not verify")
        unsigned = _unsigned_body_octets(message, sig)
        if unsigned and not allow_partial_body:
            raise _Unusable("policy", f"l= leaves {unsigned} body octets unsigned")
    except _Unusable as exc:
        return _replace(found, exc.result, exc.reason)
    return _replace(found, "pass", "")


def _replace(outcome: DkimOutcome, result: DkimResult, reason: str) -> DkimOutcome:
    return DkimOutcome(result, outcome.domain, outcome.selector, outcome.algorithm,
                       outcome.signature_start, reason)


async def _key_record(resolver: Resolver, selector: str, domain: str) -> str:
    name = f"{selector}._domainkey.{domain}"
    try:
        answer = await resolver.txt(name)
    except BadName as exc:
        raise _Unusable("permerror", f"bad key name: {exc}") from None
    if answer.tempfail:
        raise _Unusable("temperror", f"key lookup failed: {answer.describe()}")
    if not answer.ok:
        raise _Unusable("permerror", f"no key at {name} ({answer.status})")
    return answer.records[0]


def _check_key(record: str, key_type: bytes, found: DkimOutcome) -> None:
    try:
        _pk, bits, ktag, _tlsrpt = dkimpy.evaluate_pk(found.domain, record.encode("ascii", "replace"))
    except (dkimpy.DKIMException, binascii.Error, ValueError, KeyError) as exc:
        raise _Unusable("permerror", f"unusable key: {exc}") from None
    if ktag != key_type:
        raise _Unusable("permerror", f"key type {_text(ktag)} does not match a={found.algorithm}")
    if ktag == b"rsa" and bits is not None and bits < MIN_RSA_BITS:
        raise _Unusable("permerror", f"RSA key of {bits} bits is too short (RFC 8301)")


def _check_signature(message: dkimpy.DKIM, sig: dict, include_headers: list, field: tuple,
                     record: str) -> bool:
    def dnsfunc(_name: bytes, timeout: float = 5) -> bytes:
        return record.encode("ascii", "replace")

    try:
        return bool(message.verify_sig(sig, include_headers, field, dnsfunc))
    except dkimpy.ValidationError as exc:  # body hash mismatch
        raise _Unusable("fail", str(exc).split(" (")[0]) from None
    except Exception as exc:  # key or signature data dkimpy cannot use
        raise _Unusable("permerror", f"cannot verify: {type(exc).__name__}: {exc}") from None


def _unsigned_body_octets(message: dkimpy.DKIM, sig: dict) -> int:
    if b"l" not in sig:
        return 0
    policy = dkimpy.CanonicalizationPolicy.from_c_value(sig.get(b"c", b"simple/simple"))
    return max(0, len(policy.canonicalize_body(message.body)) - int(sig[b"l"]))
