"""Shared helpers of the auth stage tests: the session NSD (from the SMTP-check tests) and DKIM signing
with the TEST-ONLY keys of deploy/local/dns/keys/."""
from __future__ import annotations

import dkim

from pipeline.localstack.nsd import ZONES_DIR

RSA_KEY = (ZONES_DIR / "keys/good.test.sel.private").read_bytes()
ED25519_KEY = (ZONES_DIR / "keys/signed.test.ed.private").read_bytes().strip()


def message(from_addr: str = "lehrer@good.test", body: str = "Hallo,\r\nbis morgen.\r\n", extra: str = "") -> bytes:
    return (f"From: Lehrer <{from_addr}>\r\nTo: max.mustermann@school.test\r\nSubject: Elternabend\r\n"
            f"Date: Mon, 01 Jun 2026 10:00:00 +0200\r\nMessage-ID: <abc@good.test>\r\n{extra}\r\n{body}").encode()


def sign(raw: bytes, domain: str = "good.test", selector: str = "sel", algorithm: str = "rsa-sha256",
         canonicalize: tuple[bytes, bytes] = (b"relaxed", b"simple"), length: bool = False) -> bytes:
    """`raw` with a DKIM-Signature on top, made by dkimpy with the test key for `algorithm`."""
    key = ED25519_KEY if algorithm == "ed25519-sha256" else RSA_KEY
    field = dkim.sign(raw, selector.encode(), domain.encode(), key, canonicalize=canonicalize,
                      signature_algorithm=algorithm.encode(), length=length,
                      include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    return field + raw
