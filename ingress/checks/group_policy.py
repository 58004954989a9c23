"""Group policy: who may write to protected recipients, as rules in the config (hook `rcpt`).

Each rule names the recipients it protects and the senders it lets through:

- it applies to a recipient listed in `recipients`, or to a member of a group listed in
  `recipients_in` (a member of the group in the directory, directly or through nested groups).
  A local recipient is resolved in the directory first, so any of its addresses matches: mail to
  an alias is protected like mail to the mailbox;
- then the sender must be a member of a group in `allow_senders_in`, or have an address in a
  domain of `allow_sender_domains` (exact domain, no subdomains). Otherwise the recipient is
  refused with ``550 5.7.1 <reason>`` (reason code ``group_policy``; the detail is the rule's
  name). When several rules apply to one recipient, the sender must satisfy every one of them.

Groups are written as their list address (``staff@school.test``) or their ``cn`` (``staff``);
addresses and domains compare case-insensitively.

Who the sender is:

- an authenticated session: the account's addresses (`CheckContext.auth_addresses`; the
  `sender_login` check makes sure the envelope sender is one of them);
- otherwise the envelope sender. On port 25 anyone can write any address into MAIL FROM, so
  with `local_senders_need_auth` (the default) an envelope sender in one of our own local
  domains counts as nobody unless the session is authenticated or comes from
  `ingress.relay_networks`: outsiders cannot pass a rule by claiming a teacher's address;
- the null sender ``<>`` (bounces, auto-replies) passes a rule only with `allow_null_sender`.
  The default refuses it: class and parent lists never send mail, so they never get bounces,
  and ``<>`` is a common way to slip past sender rules.

Lookups the rules need (the recipient's groups, the sender's groups) go to the directory; when it
is down or too slow the recipient gets ``451 4.4.3 Policy lookup failed, try again later``
(reason ``ldap_unavailable``). Without rules the check asks nothing and passes.

Settings (``[checks.group_policy]``):

- ``local_senders_need_auth`` (boolean, true): see above.
- ``rules`` (array of tables ``[[checks.group_policy.rules]]``), each with ``name`` (string,
  required, unique), ``recipients`` and ``recipients_in`` (lists of strings, at least one
  non-empty), ``allow_senders_in`` and ``allow_sender_domains`` (lists of strings),
  ``allow_null_sender`` (boolean, false), ``reason`` (string, the reply text after
  ``550 5.7.1``; one line of printable ASCII).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ingress.checks import PASS, Check, CheckContext, CheckServices, Decision, refuse, register_check
from pipeline.clients.directory import DirectoryUnavailable
from pipeline.settings import ConfigError

__all__ = ["GroupPolicyCheck", "GroupPolicySettings", "GroupRule", "LOOKUP_FAILED"]

LOOKUP_FAILED = "451 4.4.3 Policy lookup failed, try again later"
_KEY = "checks.group_policy.rules"


@dataclass(frozen=True, slots=True)
class GroupRule:
    name: str = ""
    recipients: list[str] = field(default_factory=list)  # addresses protected themselves (e.g. 9a@)
    recipients_in: list[str] = field(default_factory=list)  # groups whose members are protected
    allow_senders_in: list[str] = field(default_factory=list)  # groups whose members may send
    allow_sender_domains: list[str] = field(default_factory=list)  # domains that may send
    allow_null_sender: bool = False
    reason: str = "Sender address rejected: not allowed to write to this recipient"

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError(f"{_KEY}: every rule needs a name")
        if not (self.recipients or self.recipients_in):
            raise ConfigError(f"{_KEY}: rule {self.name!r} protects nobody (set recipients or recipients_in)")
        if not self.reason or not self.reason.isascii() or not self.reason.isprintable() or len(self.reason) > 200:
            raise ConfigError(f"{_KEY}: rule {self.name!r}: reason must be one line of printable ASCII "
                              f"(at most 200 characters), got {self.reason!r}")


@dataclass(frozen=True, slots=True)
class GroupPolicySettings:
    rules: list[GroupRule] = field(default_factory=list)
    # an envelope sender in a local domain counts only when authenticated or from relay_networks
    local_senders_need_auth: bool = True
    # local parts no rule ever applies to, in every local domain (RFC 5321 4.5.1, RFC 2142): they
    # stay reachable from anyone, even with the directory down
    exempt: list[str] = field(default_factory=lambda: ["postmaster", "abuse"])

    def __post_init__(self) -> None:
        names = [rule.name for rule in self.rules]
        if len(set(names)) != len(names):
            raise ConfigError(f"{_KEY}: rule names must be unique, got {names}")


@dataclass(frozen=True, slots=True)
class _Rule:
    """A rule with its lists lower-cased into sets, ready to compare."""

    name: str
    recipients: frozenset[str]
    recipients_in: frozenset[str]
    allow_senders_in: frozenset[str]
    allow_sender_domains: frozenset[str]
    allow_null_sender: bool
    reply: str

    @classmethod
    def of(cls, rule: GroupRule) -> _Rule:
        def lower(values: list[str]) -> frozenset[str]:
            return frozenset(v.strip().lower() for v in values if v.strip())

        return cls(rule.name, lower(rule.recipients), lower(rule.recipients_in), lower(rule.allow_senders_in),
                   lower(rule.allow_sender_domains), rule.allow_null_sender, f"550 5.7.1 {rule.reason}")


@register_check
class GroupPolicyCheck(Check):
    name = "group_policy"
    description = "who may write to which group and its members (rules as data)"
    Settings = GroupPolicySettings

    def __init__(self, settings: GroupPolicySettings, services: CheckServices) -> None:
        super().__init__(settings, services)
        self.rules = [_Rule.of(rule) for rule in settings.rules]
        self.exempt = frozenset(part.strip().lower() for part in settings.exempt)

    async def start(self) -> None:
        if self.rules and self.services.directory is None:
            raise RuntimeError("the group_policy check needs the directory ([ldap])")

    async def rcpt(self, ctx: CheckContext, recipient: str) -> Decision:
        if not self.rules:
            return PASS
        address = _normalize(recipient)
        if self._is_local(address) and address.partition("@")[0] in self.exempt:
            return PASS
        try:
            for rule in await self._rules_for(address):
                if not await self._sender_allowed(ctx, rule):
                    return refuse(rule.reply, "group_policy", rule.name)
        except DirectoryUnavailable as exc:
            return refuse(LOOKUP_FAILED, "ldap_unavailable", str(exc))
        return PASS

    async def _rules_for(self, recipient: str) -> list[_Rule]:
        """The rules protecting `recipient`, by any of its addresses (aliases too) or its groups."""
        names, groups = {recipient}, frozenset()
        if self._is_local(recipient):
            entry = await self.services.directory.lookup(recipient)
            if entry is not None:
                names |= entry.addresses
                if any(r.recipients_in for r in self.rules):
                    groups = await self.services.directory.member_of(recipient)
        return [r for r in self.rules if r.recipients & names or r.recipients_in & groups]

    async def _sender_allowed(self, ctx: CheckContext, rule: _Rule) -> bool:
        if not ctx.authenticated and not ctx.sender:
            return rule.allow_null_sender
        addresses = self._sender_addresses(ctx)
        if any(_domain(a) in rule.allow_sender_domains for a in addresses):
            return True
        if rule.allow_senders_in:
            for address in addresses:
                if await self.services.directory.member_of(address) & rule.allow_senders_in:
                    return True
        return False

    def _sender_addresses(self, ctx: CheckContext) -> frozenset[str]:
        """The addresses the sender is known to own (none for an unproven claim to a local one)."""
        sender = _normalize(ctx.sender or "")
        if ctx.authenticated:
            return frozenset(_normalize(a) for a in ctx.auth_addresses) or frozenset({sender})
        if self._is_local(sender) and self.settings.local_senders_need_auth and not ctx.trusted:
            return frozenset()
        return frozenset({sender})

    def _is_local(self, address: str) -> bool:
        return _domain(address) in self.services.local_domains


def _domain(address: str) -> str:
    return address.rpartition("@")[2].rstrip(".").lower()


def _normalize(address: str) -> str:
    """Lower case, without the trailing dot of a domain ("9a@School.Test." is "9a@school.test")."""
    local, at, domain = address.rpartition("@")
    return f"{local}{at}{domain.rstrip('.')}".lower()
