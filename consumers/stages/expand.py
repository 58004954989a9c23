"""expand: group addresses become their members, aliases their mailbox (before spam and route).

For each recipient in play in a local domain, the stage asks the directory what the address stands
for (`pipeline.clients.groups`, through the site's `Directory` and its cache):

- a **group**: the recipient is replaced by its members' primary addresses (`Outcome.replace`); the
  runner keeps an address once however many groups reach it. The replacement travels in every
  later event (`stage_result`, `routed`, `deferred`, ...), so a retried delivery goes to the members
  of the moment of acceptance, never to whoever is in the group at the retry (Exim's `one_time`).
  Loops, duplicates, disabled members, members without a mailbox and references that name nobody
  are recorded per group in the details (`schemas.stages.expand`). A group that leaves nobody to
  deliver to is rejected for that recipient, with the reason (the sender gets a DSN);
- an **alias** (`mailLocalAddress`): replaced by the person's mailbox (`sekretariat@` → anna);
- a **mailbox**, or an address the directory does not know (``postmaster@``, outside addresses):
  left as it is;
- a **disabled** person, or one without a mailbox: rejected for that recipient.

A group over `max_members` addresses or nested deeper than `max_depth`: with ``on_limit =
"tempfail"`` (the default) a `TemporaryFailure` naming the group and the limit: the message waits
in its partition, retried with backoff, until a person shrinks the group or raises the limit (the
partition waits with it; never a truncated list). ``"reject"`` refuses that recipient instead. Each
limit hit logs an error and counts in ``poststelle_expand_limit_total`` (the stage's ``/metrics``).
The directory down or too slow: `TemporaryFailure`.

Member bounces: with ``bounces_to = "owner"``, the copies for a group's members carry an
`envelope_sender` edit with the group owner's address (its `owner` DN's `mail`): the delivery sink
sends them with that MAIL FROM, so a full mailbox of one student bounces to the class teacher, not
to every parent who wrote to the class. Members who were recipients in their own right keep the
original sender; a group without an owner, and mail from the null sender (a DSN, which must never
be bounced), keep it too. ``"sender"`` (default): the original sender.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pipeline.clients.directory import Directory, DirectoryUnavailable
from pipeline.clients.groups import DEFAULT_MAX_DEPTH, DEFAULT_MAX_MEMBERS, Expansion, ExpansionTooLarge, GroupExpander
from pipeline.metrics import counter
from pipeline.registry import register
from pipeline.settings import ConfigError
from pipeline.stage import Outcome, StageContext, TemporaryFailure, Work
from schemas.codec import plain
from schemas.events import Edit, Replacement, Verdict
from schemas.stages.expand import ExpandDetails, GroupExpansion

__all__ = ["ExpandStage", "ExpandSettings"]

log = logging.getLogger(__name__)

ON_LIMIT_ACTIONS = ("tempfail", "reject")
BOUNCES_TO = ("sender", "owner")
LIMITS = counter("poststelle_expand_limit", "group expansions stopped by max_members or max_depth", ["action"])


@dataclass(frozen=True, slots=True)
class ExpandSettings:
    max_members: int = DEFAULT_MAX_MEMBERS  # distinct addresses one group may expand into
    max_depth: int = DEFAULT_MAX_DEPTH  # levels of groups in groups (the group itself is level 1)
    on_limit: str = "tempfail"  # tempfail | reject: a group over a limit waits for a person, or is refused
    bounces_to: str = "sender"  # sender | owner: the envelope sender of the members' copies
    local_domains: list[str] = field(default_factory=list)  # empty: the ingress's local domains

    def __post_init__(self) -> None:
        for key in ("max_members", "max_depth"):
            if getattr(self, key) < 1:
                raise ConfigError(f"stages.expand.{key}: expected at least 1, got {getattr(self, key)}")
        for key, allowed in (("on_limit", ON_LIMIT_ACTIONS), ("bounces_to", BOUNCES_TO)):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"stages.expand.{key}: expected one of {', '.join(allowed)}, "
                                  f"got {getattr(self, key)!r}")


@dataclass(slots=True)
class _Decisions:
    """What the stage decided for one message so far."""

    replace: list[Replacement] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    edits: list[Edit] = field(default_factory=list)
    groups: list[GroupExpansion] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)


@register
class ExpandStage:
    name = "expand"
    description = "Expands group addresses into their members and aliases into their mailbox (LDAP)"
    Settings = ExpandSettings

    def __init__(self, settings: ExpandSettings, context: StageContext, *, directory: Directory | None = None) -> None:
        self.settings = settings
        self.directory = directory or Directory.from_settings(context.settings.ldap)
        domains = settings.local_domains or context.settings.ingress.local_domains
        self.expander = GroupExpander(self.directory, domains, max_members=settings.max_members,
                                      max_depth=settings.max_depth)

    async def start(self) -> None:
        await self.directory.start()

    async def close(self) -> None:
        await self.directory.close()

    async def process(self, work: Work) -> Outcome:
        decided = _Decisions()
        for recipient in work.recipients:
            if not self.expander.is_local(recipient):
                continue
            try:
                expansion = await self.expander.expand(recipient)
            except DirectoryUnavailable as exc:
                raise TemporaryFailure(f"directory: {exc}") from None
            except ExpansionTooLarge as exc:
                self._limit_hit(work, recipient, str(exc), decided)
                continue
            self._decide(work, recipient, expansion, decided)
        details = ExpandDetails(groups=decided.groups, aliases=decided.aliases, refused=decided.rejected)
        return Outcome(verdict=Verdict.PASS, details=plain(details), replace=decided.replace,
                       rejected=decided.rejected, edits=decided.edits)

    def _limit_hit(self, work: Work, recipient: str, reason: str, decided: _Decisions) -> None:
        LIMITS.labels(self.settings.on_limit).inc()
        log.error("message %s: %s; a person must shrink the group or raise [stages.expand] limits (%s)",
                  work.message.message_id, reason, self.settings.on_limit)
        if self.settings.on_limit == "reject":
            decided.rejected[recipient] = reason
            return
        raise TemporaryFailure(f"{reason}; waiting for a person (shrink the group or raise [stages.expand])")

    def _decide(self, work: Work, recipient: str, found: Expansion, decided: _Decisions) -> None:
        if found.kind == "alias":
            decided.replace.append(Replacement(recipient=recipient, into=list(found.into),
                                               reason=f"alias of {found.into[0]}"))
            decided.aliases[recipient] = found.into[0]
        elif found.kind == "disabled":
            decided.rejected[recipient] = "mailbox disabled, the account is no longer active"
        elif found.kind == "no_mailbox":
            decided.rejected[recipient] = "the directory entry has no mailbox"
        elif found.kind == "group":
            self._group(work, recipient, found, decided)

    def _group(self, work: Work, recipient: str, found: Expansion, decided: _Decisions) -> None:
        bounces_to = found.owner if self.settings.bounces_to == "owner" else ""
        decided.groups.append(GroupExpansion(
            group=recipient, name=found.name, members=list(found.into), nested=list(found.nested),
            loops=list(found.loops), duplicates=list(found.duplicates), disabled=list(found.disabled),
            no_mailbox=list(found.no_mailbox), unknown=list(found.unknown), bounces_to=bounces_to))
        if not found.into:
            decided.rejected[recipient] = f"group {recipient} has no member that can receive mail"
            return
        decided.replace.append(Replacement(recipient=recipient, into=list(found.into),
                                           reason=f"group {found.name or recipient}: {len(found.into)} member(s)"))
        in_play_before = set(work.recipients)
        members = [m for m in found.into if m not in in_play_before]
        null_sender = work.message.envelope.mail_from.strip() in ("", "<>")  # a bounce itself: never bounced
        if bounces_to and members and not null_sender:
            decided.edits.append(Edit(stage=self.name, kind="envelope_sender", value=bounces_to, recipients=members))
