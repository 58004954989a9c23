"""DKIM signing (RFC 6376) of mail the site sends out from its own domains, with dkimpy.

The outbound sinks (smarthost, mx) sign the message exactly as it leaves: after
`pipeline.mail.render.render` has applied every stage's edits, so no later change can break the
signature. Which mail is signed: the header From domain (DMARC aligns with it), or the envelope
sender's domain when the message has no From field, when that domain has a key in `[dkim] keys`.
A From field that cannot be read, or one with addresses in several domains, is not signed: the
signature would not make the mail align, and guessing the domain could sign for the wrong one.

Canonicalization is relaxed/relaxed: it survives the re-folding and white-space changes relays are
known to make. Keys are read once, at start; an unreadable key is a `ConfigError` then, never a
failed delivery later.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import dkim as dkimpy

from pipeline.mail.headers import parse_header
from pipeline.outbound_settings import DkimSettings
from pipeline.settings import REPO_ROOT, ConfigError

__all__ = ["DkimSigner", "SigningKey", "signing_domain"]

log = logging.getLogger(__name__)
CANONICALIZATION = (b"relaxed", b"relaxed")


@dataclass(frozen=True, slots=True)
class SigningKey:
    domain: str
    selector: str
    private_key: bytes
    algorithm: str = "rsa-sha256"


def signing_domain(data: bytes, mail_from: str) -> str:
    """The domain a message is signed for: its author domain, or (no From field) the envelope sender's."""
    authors = parse_header(data).authors
    if authors.fields == 0:
        return mail_from.rpartition("@")[2].lower() if "@" in mail_from else ""
    return authors.domain


def _read_key(path_text: str, domain: str) -> bytes:
    path = Path(path_text)
    path = path if path.is_absolute() else REPO_ROOT / path
    try:
        return path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"dkim.keys ({domain}): cannot read key_file {path_text}: {exc.strerror or exc}") from None


class DkimSigner:
    """Signs messages from the domains it has keys for; others pass unchanged."""

    def __init__(self, keys: list[SigningKey], headers: list[str] | None = None) -> None:
        self.keys = {k.domain.lower(): k for k in keys}
        self.headers = [h.encode("ascii").lower() for h in headers] if headers else None

    @classmethod
    def from_settings(cls, settings: DkimSettings) -> DkimSigner:
        """The signer of `[dkim]`, every key read and tried once (ConfigError when one does not sign)."""
        keys = [SigningKey(k.domain.lower(), k.selector, _read_key(k.key_file, k.domain), k.algorithm)
                for k in settings.keys]
        signer = cls(keys, list(settings.headers))
        probe = f"From: <postmaster@{{}}>\r\nSubject: key check\r\n\r\nkey check\r\n"
        for key in keys:
            try:
                signer._sign(probe.format(key.domain).encode(), key)
            except (dkimpy.DKIMException, ValueError) as exc:
                raise ConfigError(f"dkim.keys ({key.domain}): the key in its key_file does not sign: {exc}") from None
        return signer

    def __bool__(self) -> bool:
        return bool(self.keys)

    def sign(self, data: bytes, mail_from: str) -> bytes:
        """`data` with a DKIM-Signature field on top when its domain has a key, else `data` itself."""
        if not self.keys:
            return data
        key = self.keys.get(signing_domain(data, mail_from))
        if key is None:
            return data
        try:
            return self._sign(data, key) + data
        except (dkimpy.DKIMException, ValueError) as exc:  # a message dkimpy cannot parse: send it unsigned
            log.warning("DKIM: cannot sign mail from %s: %s", key.domain, exc)
            return data

    def _sign(self, data: bytes, key: SigningKey) -> bytes:
        """The DKIM-Signature field. From is always in h= (RFC 6376 5.4), also when the message has none:
        the signature then covers its absence, so no From can be added later."""
        message = dkimpy.DKIM(data, signature_algorithm=key.algorithm.encode("ascii"))
        include = list(self.headers or message.default_sign_headers())
        if b"from" not in include:
            include.append(b"from")
        return message.sign(key.selector.encode("ascii"), key.domain.encode("ascii"), key.private_key,
                            canonicalize=CANONICALIZATION, include_headers=include)
