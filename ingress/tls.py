"""TLS for the submission listeners: the site's certificate, or a self-signed one for the local stack.

`submission.cert_file` and `submission.key_file` name PEM files. When both are empty, a self-signed
certificate for `ingress.hostname` is made once with the `openssl` command into `<home>/tls/` (and
reused on later starts), which is what the local stack runs with.
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


def server_context(settings: Settings) -> ssl.SSLContext:
    """The server-side TLS context of the submission listeners (TLS 1.2 or newer)."""
    sub = settings.submission
    if bool(sub.cert_file) != bool(sub.key_file):
        raise ConfigError("submission.cert_file and submission.key_file: set both, or neither for a self-signed one")
    if sub.cert_file:
        cert, key = _resolve(sub.cert_file), _resolve(sub.key_file)
    else:
        cert, key = self_signed_certificate(settings.home / "tls", settings.ingress.hostname)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"submission.cert_file: cannot load {cert} / {key}: {exc}") from None
    return context
