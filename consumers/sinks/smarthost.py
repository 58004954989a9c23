"""Smarthost sink: delivers `routed` events for non-local recipients to the site's smarthost over SMTP.

SMTP answers once after DATA for every accepted recipient, unlike LMTP; a refusal at RCPT still
applies to its recipient only. TLS (`sinks.smarthost.tls`), certificate checks and AUTH are the
transport's (`consumers.sinks.transport.SmtpClientTransport`); the delivery logic (ledger, events,
transactions) is `consumers.sinks.delivery.DeliverySink`. Mail from the site's own domains is
DKIM-signed (`[dkim]`, `pipeline.mail.dkim_sign`) as it leaves.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from consumers.sinks.delivery import DeliverySink
from consumers.sinks.transport import SmtpClientTransport, client_ssl_context
from pipeline.blobstore import FileBlobStore
from pipeline.mail.dkim_sign import DkimSigner
from pipeline.settings import REPO_ROOT, ConfigError, Settings, SmarthostSinkSettings

__all__ = ["run_smarthost_sink", "smarthost_transport", "read_password"]

DESTINATION = "smarthost"


def _config_path(text: str) -> Path:
    """Relative paths in the config are relative to the project, like paths.home."""
    path = Path(text)
    return path if path.is_absolute() else REPO_ROOT / path


def read_password(s: SmarthostSinkSettings) -> str:
    """The AUTH password from `password_file`, trailing newline stripped ("" without a file)."""
    if s.username and not s.password_file:
        raise ConfigError("sinks.smarthost.password_file: required when sinks.smarthost.username is set")
    if not s.password_file:
        return ""
    try:
        return _config_path(s.password_file).read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"sinks.smarthost.password_file: cannot read {s.password_file}: "
                          f"{exc.strerror or exc}") from None


def smarthost_transport(s: SmarthostSinkSettings) -> SmtpClientTransport:
    """The SMTP client the sink delivers through, built and checked at start."""
    context = None
    if s.tls != "none":
        try:
            context = client_ssl_context(s.verify, str(_config_path(s.ca_file)) if s.ca_file else "")
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError: a file that is not PEM
            raise ConfigError(f"sinks.smarthost.ca_file: {exc}") from None
    return SmtpClientTransport(s.host, s.port, lmtp=False, helo_name=s.helo_name, timeout=s.timeout,
                               tls=s.tls, ssl_context=context, username=s.username, password=read_password(s))


async def run_smarthost_sink(settings: Settings, stop: asyncio.Event, on_ready: Callable[[], None] | None = None,
                             instance: str = "0") -> DeliverySink:
    s = settings.sinks.smarthost
    sink = DeliverySink(settings, DESTINATION, smarthost_transport(s), FileBlobStore(settings.home / "blobs"),
                        inflight=s.inflight, instance=instance, signer=DkimSigner.from_settings(settings.dkim))
    await sink.run(stop, on_ready)
    return sink
