"""Recipient check: a local recipient must exist in the directory and be enabled (hook `rcpt`).

Only recipients in one of `ingress.local_domains` are looked up; every other recipient passes
here (the `relay` check, earlier in the chain, decides about those). A local recipient is found
by its mailbox, an alias or a group address (`pipeline.directory.Directory.lookup`):

- not found: ``550 5.1.1 Recipient address rejected: User unknown`` (reason ``unknown_recipient``);
  refusing at RCPT time is what keeps the gateway from accepting mail it would have to bounce to
  a possibly forged sender (backscatter);
- a disabled person (``shadowExpire`` reached): ``550 5.2.1 Recipient address rejected: mailbox
  disabled, the account is no longer active`` (reason ``recipient_disabled``);
- the directory down or too slow: ``451 4.4.3 Recipient address lookup failed, try again later``
  (reason ``ldap_unavailable``); the sending MTA retries.

The role addresses in `always_accept` (``postmaster`` and ``abuse`` by default) are accepted for
every local domain without asking the directory, even while it is down: RFC 5321 4.5.1 requires
postmaster, RFC 2142 names abuse. (The local stack delivers them to Dovecot mailboxes of those
names, see ``deploy/local/dovecot/users``.) A local address that another MTA would read as a
route (``a%b@``, ``a!b@``, quoted local parts: refused by `relay` before this check) is refused
as unknown.

With ``[srs] enabled``, an SRS address of the SRS domain (``SRS0=...@school.test``, a bounce of a
forwarded copy) is not looked up: no entry has it; the `srs` check verifies it.

Settings (``[checks.recipient]``):

- ``always_accept`` (list of strings, ``["postmaster", "abuse"]``): local parts accepted in every
  local domain without a lookup; compared case-insensitively.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ingress.addresses import AddressError, parse_address
from ingress.checks import PASS, Check, CheckContext, CheckServices, Decision, refuse, register_check
from pipeline.clients.directory import DirectoryUnavailable
from pipeline.mail.srs import is_srs, srs_signer

__all__ = ["RecipientCheck", "RecipientSettings", "USER_UNKNOWN", "MAILBOX_DISABLED", "LOOKUP_FAILED"]

USER_UNKNOWN = "550 5.1.1 Recipient address rejected: User unknown"
MAILBOX_DISABLED = "550 5.2.1 Recipient address rejected: mailbox disabled, the account is no longer active"
LOOKUP_FAILED = "451 4.4.3 Recipient address lookup failed, try again later"


@dataclass(frozen=True, slots=True)
class RecipientSettings:
    # local parts accepted in every local domain without asking the directory (RFC 5321, RFC 2142)
    always_accept: list[str] = field(default_factory=lambda: ["postmaster", "abuse"])


@register_check
class RecipientCheck(Check):
    name = "recipient"
    description = "local recipients must exist (and be enabled) in LDAP"
    Settings = RecipientSettings

    def __init__(self, settings: RecipientSettings, services: CheckServices) -> None:
        super().__init__(settings, services)
        self.always_accept = frozenset(part.lower() for part in settings.always_accept)
        signer = srs_signer(services.settings) if services.settings is not None else None
        self.srs_domain = signer.domain if signer is not None else ""

    async def start(self) -> None:
        if self.services.directory is None:
            raise RuntimeError("the recipient check needs the directory ([ldap])")

    async def rcpt(self, ctx: CheckContext, recipient: str) -> Decision:
        domain = recipient.rpartition("@")[2].rstrip(".").lower()
        if domain not in self.services.local_domains:
            return PASS
        try:
            address = parse_address(recipient)
        except AddressError as exc:
            return refuse(USER_UNKNOWN, "unknown_recipient", f"{recipient!r}: {exc}")
        if address.local.lower() in self.always_accept:
            return PASS
        if self.srs_domain and address.domain == self.srs_domain and is_srs(str(address)):
            return PASS  # the srs check verifies it
        try:
            entry = await self.services.directory.lookup(str(address))
        except DirectoryUnavailable as exc:
            return refuse(LOOKUP_FAILED, "ldap_unavailable", str(exc))
        if entry is None:
            return refuse(USER_UNKNOWN, "unknown_recipient", f"{address} is not in the directory")
        if entry.disabled:
            return refuse(MAILBOX_DISABLED, "recipient_disabled", f"{address}: {entry.dn} has expired (shadowExpire)")
        return PASS
