"""Sender login: an authenticated user sends only as one of their own addresses (hooks `mail`, `data`).

The addresses a user owns are the account's primary `mail` and its aliases, which AUTH put into
`CheckContext.auth_addresses`; they compare case-insensitively.

- `mail`, unauthenticated: on the submission listener ``530 5.7.0 Authentication required``
  (reason ``auth_required``; submission is for authenticated users, RFC 6409); on the MX listener
  the check has nothing to say and passes.
- `mail`, authenticated: the envelope sender must be an owned address, else ``553 5.7.1 Sender
  address rejected: not owned by user <login>`` (reason ``sender_not_owned``). The null sender
  ``<>`` is refused the same way: a user's client has no business sending bounces, and a message
  without a return path could not be bounced back to the user.
- `data`, authenticated (with `check_header_from`): every address in every ``From:`` header
  (RFC 5322, parsed by the email package: encoded words, several mailboxes, groups) must be owned,
  else the same ``553 5.7.1`` reply (reason ``sender_not_owned``). A message whose From is missing,
  empty or not cleanly parseable (the parser reports a defect: comments or garbage where the
  address should be, a broken continuation line, an encoded word hiding an address) gets
  ``553 5.7.1 Sender address rejected: no readable From address in the message`` (reason
  ``header_from_invalid``): what a reader's client would show as the author is not certain.
  Undecodable 8-bit bytes in a display name are tolerated.

Settings (``[checks.sender_login]``):

- ``check_header_from`` (boolean, true): also check the From header at DATA.
"""
from __future__ import annotations

from dataclasses import dataclass
from email import errors, policy
from email.parser import BytesParser

from ingress.checks import PASS, Check, CheckContext, Decision, refuse, register_check

__all__ = ["SenderLoginCheck", "SenderLoginSettings", "AUTH_REQUIRED", "FROM_UNREADABLE", "header_from_addresses"]

AUTH_REQUIRED = "530 5.7.0 Authentication required"
FROM_UNREADABLE = "553 5.7.1 Sender address rejected: no readable From address in the message"
# defects that do not make an address uncertain (raw UTF-8 in a display name)
_HARMLESS_DEFECTS = (errors.UndecodableBytesDefect,)


@dataclass(frozen=True, slots=True)
class SenderLoginSettings:
    check_header_from: bool = True  # also check the From header at DATA


@register_check
class SenderLoginCheck(Check):
    name = "sender_login"
    description = "authenticated users send only as their own addresses"
    Settings = SenderLoginSettings

    async def mail(self, ctx: CheckContext, sender: str) -> Decision:
        if not ctx.authenticated:
            if ctx.listener == "submission":
                return refuse(AUTH_REQUIRED, "auth_required", "MAIL FROM before AUTH on the submission listener")
            return PASS
        if not sender:
            return refuse(_not_owned(ctx), "sender_not_owned", "null sender from an authenticated user")
        if sender.lower() not in _owned(ctx):
            return refuse(_not_owned(ctx), "sender_not_owned", f"MAIL FROM {sender} for {ctx.authenticated_as}")
        return PASS

    async def data(self, ctx: CheckContext, raw: bytes) -> Decision:
        if not ctx.authenticated or not self.settings.check_header_from:
            return PASS
        addresses = header_from_addresses(raw)
        if not addresses:
            return refuse(FROM_UNREADABLE, "header_from_invalid", "From header missing, empty or malformed")
        foreign = [a for a in addresses if a.lower() not in _owned(ctx)]
        if foreign:
            return refuse(_not_owned(ctx), "sender_not_owned",
                          f"From: {', '.join(foreign)} for {ctx.authenticated_as}")
        return PASS


def header_from_addresses(raw: bytes) -> list[str]:
    """The addr-specs of all From headers; [] when there is none or any of them is malformed."""
    message = BytesParser(policy=policy.default).parsebytes(raw, headersonly=True)
    found: list[str] = []
    for header in message.get_all("From") or []:
        if any(not isinstance(d, _HARMLESS_DEFECTS) for d in header.defects):
            return []
        for address in header.addresses:
            if not address.username or not address.domain:
                return []
            found.append(address.addr_spec)
    return found


def _owned(ctx: CheckContext) -> frozenset[str]:
    return frozenset(a.lower() for a in ctx.auth_addresses)


def _not_owned(ctx: CheckContext) -> str:
    login = "".join(c if c.isascii() and c.isprintable() else "?" for c in ctx.authenticated_as)
    return f"553 5.7.1 Sender address rejected: not owned by user {login}"
