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
- `data`, authenticated (with `check_header_from`): every address in every ``From:`` header must be
  owned, else the same ``553 5.7.1`` reply (reason ``sender_not_owned``). The From is read by the
  one From policy of the parsed message (`pipeline.mail.headers.Authors`, the same parse DMARC uses,
  done once per transaction by `CheckContext.message_header`): RFC 5322 with encoded words, several
  mailboxes, groups, obsolete syntax. A message whose From is not *readable* there (missing, empty,
  not cleanly parseable: comments or garbage where the address should be, two addresses without a
  comma, an encoded word hiding an address) gets ``553 5.7.1 Sender address rejected: no readable
  From address in the message`` (reason ``header_from_invalid``, the problems in the detail): what
  a reader's client would show as the author is not certain.

Settings (``[checks.sender_login]``):

- ``check_header_from`` (boolean, true): also check the From header at DATA.
"""
from __future__ import annotations

from dataclasses import dataclass

from ingress.checks import PASS, Check, CheckContext, Decision, refuse, register_check

__all__ = ["SenderLoginCheck", "SenderLoginSettings", "AUTH_REQUIRED", "FROM_UNREADABLE"]

AUTH_REQUIRED = "530 5.7.0 Authentication required"
FROM_UNREADABLE = "553 5.7.1 Sender address rejected: no readable From address in the message"


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
        authors = ctx.message_header(raw).authors
        if not authors.readable:
            return refuse(FROM_UNREADABLE, "header_from_invalid", "; ".join(authors.problems))
        foreign = [a for a in authors.addresses if a.lower() not in _owned(ctx)]
        if foreign:
            return refuse(_not_owned(ctx), "sender_not_owned",
                          f"From: {', '.join(foreign)} for {ctx.authenticated_as}")
        return PASS


def _owned(ctx: CheckContext) -> frozenset[str]:
    return frozenset(a.lower() for a in ctx.auth_addresses)


def _not_owned(ctx: CheckContext) -> str:
    login = "".join(c if c.isascii() and c.isprintable() else "?" for c in ctx.authenticated_as)
    return f"553 5.7.1 Sender address rejected: not owned by user {login}"
