"""The sink of one destination: `routed.<name>` delivered through the transport of the destination's kind.

Every destination of the config (`[destinations.<name>]`, with the defaults ``lmtp`` and
``smarthost``; see `pipeline.destination_settings`) runs this sink as its own process
(`poststelle run sink:<name>`), a `DeliverySink` with its own consumer group, ledger entries, retries
and DSNs. How it talks to the next hop depends on the kind only: `TRANSPORTS` maps each kind to the
function that builds its transport from the destination's settings, checked at start (a missing
password or CA file is a `ConfigError` naming the key, not a deferred delivery later).

- ``lmtp``: LMTP (RFC 2033) to a mailbox server; per-recipient replies after DATA, so a full mailbox
  defers only its own recipient;
- ``smtp``: SMTP to one fixed next hop (the smarthost, an Exchange server, a list host), with TLS
  (`tls`: none, opportunistic, required, implicit), certificate checks and AUTH as configured;
- ``mx``: SMTP straight to each recipient domain's MX hosts, found in the DNS (`consumers.sinks.mx`).

Mail to a destination of kind smtp or mx leaves the site: those sinks DKIM-sign it (`[dkim]`,
`pipeline.mail.dkim_sign`) after every edit; an LMTP destination never signs.

A new kind is one entry in `TRANSPORTS` and its name in `pipeline.destination_settings.DESTINATION_KINDS`.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from consumers.sinks.delivery import DeliverySink
from consumers.sinks.mx import MxTransport
from consumers.sinks.transport import DeliveryTransport, SmtpClientTransport, client_ssl_context
from pipeline.blobstore import FileBlobStore
from pipeline.clients.dns import Resolver
from pipeline.destination_settings import SIGNING_KINDS, DestinationSettings
from pipeline.mail.dkim_sign import DkimSigner
from pipeline.settings import REPO_ROOT, ConfigError, Settings

__all__ = ["run_destination_sink", "destination_transport", "destination_signer", "smtp_transport", "lmtp_transport",
           "mx_transport", "read_password", "TRANSPORTS"]


def _config_path(text: str) -> Path:
    """Relative paths in the config are relative to the project, like paths.home."""
    path = Path(text)
    return path if path.is_absolute() else REPO_ROOT / path


def read_password(s: Any, key: str) -> str:
    """The AUTH password from `s.password_file`, trailing newline stripped ("" without a file).
    `key` names the section in messages (``destinations.exchange``, ``sinks.smarthost``)."""
    if s.username and not s.password_file:
        raise ConfigError(f"{key}.password_file: required when {key}.username is set")
    if not s.password_file:
        return ""
    try:
        return _config_path(s.password_file).read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"{key}.password_file: cannot read {s.password_file}: {exc.strerror or exc}") from None


def _client(s: Any, key: str, *, lmtp: bool) -> SmtpClientTransport:
    tls = s.tls or ("none" if lmtp else "opportunistic")
    context = None
    if tls != "none":
        try:
            context = client_ssl_context(s.verify, str(_config_path(s.ca_file)) if s.ca_file else "")
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError: a file that is not PEM
            raise ConfigError(f"{key}.ca_file: {exc}") from None
    return SmtpClientTransport(s.host, s.port, lmtp=lmtp, helo_name=s.helo_name, timeout=s.timeout,
                               tls=tls, ssl_context=context, username=s.username, password=read_password(s, key),
                               reuse_seconds=s.reuse_seconds)


def smtp_transport(s: Any, key: str) -> SmtpClientTransport:
    """SMTP to one next hop (`s`: a `DestinationSettings` or `[sinks.smarthost]`)."""
    return _client(s, key, lmtp=False)


def lmtp_transport(s: Any, key: str) -> SmtpClientTransport:
    """LMTP to a mailbox server."""
    return _client(s, key, lmtp=True)


def mx_transport(s: DestinationSettings, key: str, settings: Settings) -> MxTransport:
    """SMTP to each recipient domain's MX hosts, looked up with the resolver of `[dns]`."""
    return MxTransport(Resolver.from_settings(settings.dns), s, key=key,
                       own_listener=(settings.ingress.host, settings.ingress.port))


# kind -> the function building its transport from (destination settings, config key for messages,
# the whole settings: what a kind needs besides its section, such as [dns] for mx)
TRANSPORTS: dict[str, Callable[[Any, str, Settings], DeliveryTransport]] = {
    "lmtp": lambda s, key, _settings: lmtp_transport(s, key),
    "smtp": lambda s, key, _settings: smtp_transport(s, key),
    "mx": mx_transport,
}


def destination_transport(settings: Settings, name: str) -> DeliveryTransport:
    """The transport of the destination `name`, built and checked (ConfigError names the key)."""
    d = settings.destination(name)
    return TRANSPORTS[d.kind](d, f"destinations.{name}", settings)


def destination_signer(settings: Settings, name: str) -> DkimSigner | None:
    """The DKIM signer of `[dkim]` for a destination whose mail leaves the site (kind smtp or mx),
    every key read and tried (ConfigError names the domain); None for the others (LMTP)."""
    if settings.destination(name).kind not in SIGNING_KINDS:
        return None
    return DkimSigner.from_settings(settings.dkim)


async def run_destination_sink(settings: Settings, stop: asyncio.Event, on_ready: Callable[[], None] | None = None,
                               instance: str = "0", *, destination: str) -> DeliverySink:
    d = settings.destination(destination)
    sink = DeliverySink(settings, destination, destination_transport(settings, destination),
                        FileBlobStore(settings.home / "blobs"), inflight=d.inflight, instance=instance,
                        signer=destination_signer(settings, destination))
    await sink.run(stop, on_ready)
    return sink
