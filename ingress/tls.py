"""TLS for the listeners: the site's certificate, or a self-signed one for the local stack.

The submission listeners (587 with STARTTLS required, 465 with implicit TLS) use `submission.cert_file`
and `submission.key_file`; the MX listener, which offers STARTTLS to other MTAs (`ingress.starttls`),
uses `ingress.cert_file` and `ingress.key_file`, or the submission's when those are empty. All PEM
files. When none is set, a self-signed certificate for `ingress.hostname` is made once with the
`openssl` command into `<home>/tls/` (and reused on later starts), which is what the local stack runs
with. Sending MTAs rarely check the certificate of an MX (RFC 7435); DANE and MTA-STS need a real one.
"""
from __future__ import annotations

import logging
import ssl
import subprocess
from pathlib import Path

from pipeline.settings import REPO_ROOT, ConfigError, Settings

__all__ = ["server_context", "self_signed_certificate"]

log = logging.getLogger(__name__)


def self_signed_certificate(directory: Path, hostname: str) -> tuple[Path, Path]:
    """(cert, key) under `directory`, made with openssl when missing; the key is readable by the owner only."""
    cert, key = directory / "submission-cert.pem", directory / "submission-key.pem"
    if cert.exists() and key.exists():
        return cert, key
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "3650",
         "-subj", f"/CN={hostname}", "-addext", f"subjectAltName=DNS:{hostname}",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    key.chmod(0o600)
    log.info("made a self-signed certificate for %s in %s", hostname, cert)
    return cert, key


def _resolve(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else REPO_ROOT / p


def _certificate_files(settings: Settings, listener: str) -> tuple[str, str, str]:
    """(config section, cert file, key file) of the certificate `listener` uses; all "": self-signed."""
    sections = [("submission", settings.submission)]
    if listener == "mx":
        sections.insert(0, ("ingress", settings.ingress))
    for name, section in sections:
        if bool(section.cert_file) != bool(section.key_file):
            raise ConfigError(f"{name}.cert_file and {name}.key_file: set both, or neither for a self-signed one")
    return next(((name, s.cert_file, s.key_file) for name, s in sections if s.cert_file), ("", "", ""))


def server_context(settings: Settings, listener: str = "submission") -> ssl.SSLContext:
    """The server-side TLS context (TLS 1.2 or newer) of the "submission" or the "mx" listener."""
    section, cert_file, key_file = _certificate_files(settings, listener)
    if cert_file:
        cert, key = _resolve(cert_file), _resolve(key_file)
    else:
        cert, key = self_signed_certificate(settings.home / "tls", settings.ingress.hostname)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        where = f"{section}.cert_file" if section else f"the self-signed certificate in {cert.parent}"
        raise ConfigError(f"{where}: cannot load {cert} / {key}: {exc}") from None
    return context
