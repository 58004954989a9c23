"""route: decide where each recipient's copy goes (the last stage of every topology).

Destinations are data (`[destinations.<name>]`, `pipeline.destination_settings`): each has its own
`routed.<name>` topic and sink. For each recipient still in play the first rule that applies wins:

1. the site routing table by **address** (``[[stages.route.routes]] match = "chef@school.test"``);
2. the **directory** (``directory = true``), for recipients in a local domain: the
   `inetLocalMailRecipient` model (draft-lachman-laser-ldap-mail-routing), its six cases as sendmail's
   LDAP routing reads them:

   ====================  ==================  ===================================================
   mailHost              mailRoutingAddress  the copy goes
   ====================  ==================  ===================================================
   this gateway          absent              to the local destination, address unchanged
   this gateway          present             rewritten, to the local destination
   another host          absent              to the destination serving that host, unchanged
   another host          present             rewritten, to the destination serving that host
   absent                present             rewritten, then routed by rules 1, 3 and 4
   absent                absent (or no entry)  by rules 3 and 4, unchanged
   ====================  ==================  ===================================================

   "This gateway" is a name in `local_hosts` (default: `ingress.hostname`); "another host" is a name in
   some destination's `mail_hosts`. A mailHost no destination serves refuses the recipient (the sender
   gets a DSN saying so), with an error in the log: a directory entry, not the message, is wrong.
   A rewrite is a replacement (`Outcome.replace`), so the history shows both addresses.
   **Per-user forwards** (``forward_attribute``, e.g. ``poststelleForwardAddress``): the mail also
   goes to each address there, with a copy to the mailbox unless ``keep_copy_attribute`` says FALSE
   (a forward-only address); a replacement of the recipient by the mailbox and the forwards;
3. the site routing table by **domain**: ``match = "lists.school.test"`` (that domain) or
   ``match = ".physik.school.test"`` (every name under it, not the name itself); the longest match wins;
4. the defaults: a local domain to `local_destination` (LMTP), anything else to `remote_destination`.

**Forwarding with SRS** (``[srs] enabled``, `pipeline.mail.srs`): a copy whose recipient the
directory rewrote to an address outside the local domains (a forward: the alumni address) leaves
with an SRS0 envelope sender (an `envelope_sender` edit for that copy), so SPF at the next hop checks
this site; the null sender and senders in a local domain are kept. A recipient that is an SRS address
of the SRS domain (a bounce of such a copy) is reversed: replaced by the original sender, who is then
routed like any address (the DSN reaches them). A forged or expired one is refused for that recipient
(the ingress's `srs` check refuses it at RCPT already; this is the same check for what did not come
through it, and for keys rotated in between).

The directory down or too slow is a `TemporaryFailure` (the message waits, nothing is misrouted).
The runner makes one `routed` event per destination and set of edits.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from pipeline.clients.directory import Directory, DirectoryUnavailable
from pipeline.mail.srs import SrsError, is_srs, srs_signer
from pipeline.registry import register
from pipeline.settings import ConfigError
from pipeline.stage import Outcome, StageContext, TemporaryFailure, Work
from schemas.codec import plain
from schemas.events import Edit, Replacement, Verdict
from schemas.stages.route import RouteDetails

__all__ = ["RouteStage", "RouteSettings", "SiteRoute"]

log = logging.getLogger(__name__)
ROUTING_ATTRIBUTES = ("mailHost", "mailRoutingAddress")


@dataclass(frozen=True, slots=True)
class SiteRoute:
    """One entry of the site routing table (``[[stages.route.routes]]``)."""

    match: str  # an address (a@b), a domain (b: that domain) or .b (every sub-domain of b)
    destination: str

    def __post_init__(self) -> None:
        text = self.match.strip()
        if not text or text.startswith("@") or text.endswith((".", "@")) or text.count("@") > 1:
            raise ConfigError(f"stages.route.routes: match: expected an address, a domain or .domain, "
                              f"got {self.match!r}")


@dataclass(frozen=True, slots=True)
class RouteSettings:
    local_destination: str = "lmtp"
    remote_destination: str = "smarthost"
    # empty: the ingress's local domains
    local_domains: list[str] = field(default_factory=list)
    directory: bool = False  # read mailHost and mailRoutingAddress of local recipients (LDAP)
    local_hosts: list[str] = field(default_factory=list)  # mailHost names meaning this gateway; empty: ingress.hostname
    routes: list[SiteRoute] = field(default_factory=list)  # the site routing table
    forward_attribute: str = ""  # directory attribute with per-user forward addresses; "": none
    keep_copy_attribute: str = ""  # boolean attribute: FALSE = forward only; absent: keep a copy

    def check_against(self, settings: Any) -> None:
        """Every destination named here exists (called by the loader with the whole config)."""
        known = settings.destination_names
        named = [("local_destination", self.local_destination), ("remote_destination", self.remote_destination)]
        named += [(f"routes[{i}].destination", r.destination) for i, r in enumerate(self.routes)]
        for key, name in named:
            if name not in known:
                raise ConfigError(f"stages.route.{key}: expected one of {', '.join(known)}, got {name!r}")


@dataclass(slots=True)
class _Decisions:
    routes: dict[str, list[str]] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    replace: list[Replacement] = field(default_factory=list)
    rewritten: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    forwarded: dict[str, list[str]] = field(default_factory=dict)
    edits: list[Edit] = field(default_factory=list)

    def route(self, recipient: str, destination: str, reason: str) -> None:
        if any(recipient in routed for routed in self.routes.values()):
            return  # rewritten into an address that is routed already: one copy
        self.routes.setdefault(destination, []).append(recipient)
        if reason:
            self.reasons[recipient] = reason


@register
class RouteStage:
    name = "route"
    description = "Routes each recipient to its destination: the site table, the directory's mailHost, the defaults"
    Settings = RouteSettings

    def __init__(self, settings: RouteSettings, context: StageContext, *, directory: Directory | None = None) -> None:
        self.settings = settings
        domains = settings.local_domains or context.settings.ingress.local_domains
        self.local_domains = {d.lower() for d in domains}
        self.addresses = {r.match.lower(): r.destination for r in settings.routes if "@" in r.match}
        self.domains = {r.match.lower(): r.destination for r in settings.routes if "@" not in r.match}
        local_hosts = settings.local_hosts or [context.settings.ingress.hostname]
        self.hosts = {h.lower(): settings.local_destination for h in local_hosts}
        for name in context.settings.destination_names:
            for host in context.settings.destination(name).mail_hosts:
                self.hosts.setdefault(host.lower(), name)
        self.srs = srs_signer(context.settings)
        self.directory = None
        if settings.directory:
            self.directory = directory or Directory.from_settings(context.settings.ldap)

    async def start(self) -> None:
        if self.directory is not None:
            await self.directory.start()

    async def close(self) -> None:
        if self.directory is not None:
            await self.directory.close()

    def destination_of(self, recipient: str) -> tuple[str, str]:
        """(destination, reason) by the site table and the defaults (rules 1, 3 and 4); reason "" for
        the default remote route."""
        address = recipient.lower()
        if address in self.addresses:
            return self.addresses[address], "address route"
        domain = address.rpartition("@")[2]
        if domain in self.domains:
            return self.domains[domain], f"domain route {domain}"
        labels = domain.split(".")
        for i in range(1, len(labels)):  # longest parent first
            parent = "." + ".".join(labels[i:])
            if parent in self.domains:
                return self.domains[parent], f"domain route {parent}"
        if domain in self.local_domains:
            return self.settings.local_destination, ""
        return self.settings.remote_destination, ""

    async def process(self, work: Work) -> Outcome:
        decided = _Decisions()
        for recipient in work.recipients:
            if self.srs is not None and self._srs_address(recipient):
                self._reverse(recipient, decided)
                continue
            if recipient.lower() in self.addresses or self.directory is None or not self._local(recipient):
                decided.route(recipient, *self.destination_of(recipient))
                continue
            await self._by_directory(recipient, decided)
        self._sign_forwards(work, decided)
        details = RouteDetails(routes=decided.routes, reasons=decided.reasons, rewritten=decided.rewritten,
                               forwarded=decided.forwarded, refused=decided.refused)
        return Outcome(verdict=Verdict.PASS, details=plain(details), routes=decided.routes,
                       replace=decided.replace, rejected=decided.refused, edits=decided.edits)

    def _srs_address(self, recipient: str) -> bool:
        assert self.srs is not None
        return recipient.rpartition("@")[2].lower() == self.srs.domain and is_srs(recipient)

    def _reverse(self, recipient: str, decided: _Decisions) -> None:
        """A bounce to one of our SRS addresses goes to the original sender (or the previous forwarder)."""
        assert self.srs is not None
        try:
            original = self.srs.reverse(recipient)
        except SrsError as exc:
            decided.refused[recipient] = str(exc)
            return
        decided.replace.append(Replacement(recipient=recipient, into=[original], reason="SRS: to the original sender"))
        decided.rewritten[recipient] = original
        destination, _ = self.destination_of(original)
        decided.route(original, destination, "SRS reversed")

    def _sign_forwards(self, work: Work, decided: _Decisions) -> None:
        """Forwarded copies (rewritten to an outside address) leave with an SRS envelope sender."""
        sender = work.message.envelope.mail_from.strip()
        if self.srs is None or sender in ("", "<>") or self._local(sender):
            return
        targets = [new for old, new in decided.rewritten.items() if not self._srs_address(old)]
        targets += [f for forwards in decided.forwarded.values() for f in forwards]
        forwarded = [a for a in dict.fromkeys(targets) if not self._local(a)]
        if forwarded:
            decided.edits.append(Edit(stage=self.name, kind="envelope_sender", value=self.srs.forward(sender),
                                      recipients=forwarded))

    def _local(self, recipient: str) -> bool:
        return recipient.rpartition("@")[2].lower() in self.local_domains

    async def _by_directory(self, recipient: str, decided: _Decisions) -> None:
        assert self.directory is not None
        wanted = [*ROUTING_ATTRIBUTES, *(a for a in (self.settings.forward_attribute,
                                                     self.settings.keep_copy_attribute) if a)]
        try:
            found = await self.directory.attributes(recipient, wanted) or {}
        except DirectoryUnavailable as exc:
            raise TemporaryFailure(f"directory: {exc}") from None
        host = next(iter(found.get("mailHost", ())), "").strip().lower()
        routing = next(iter(found.get("mailRoutingAddress", ())), "").strip()
        forwards = [a.strip() for a in found.get(self.settings.forward_attribute, ()) if a.strip()]
        keep = next(iter(found.get(self.settings.keep_copy_attribute, ())), "TRUE").upper() != "FALSE"
        if host and host not in self.hosts:
            reason = f"the directory routes {recipient} to mailHost {host}, which no destination serves"
            log.error("%s; add it to a destination's mail_hosts or fix the entry", reason)
            decided.refused[recipient] = reason
            return
        address = routing if routing and routing.lower() != recipient.lower() else recipient
        mailbox = [address] if keep or not forwards else []
        forwards = [f for f in dict.fromkeys(forwards) if f.lower() != address.lower()]
        into = mailbox + forwards
        if into != [recipient]:
            why = "mailRoutingAddress" if not forwards else ("forward" if not mailbox else "forward, keeping a copy")
            decided.replace.append(Replacement(recipient=recipient, into=into, reason=why))
        if address != recipient:
            decided.rewritten[recipient] = address
        if forwards:
            decided.forwarded[recipient] = forwards
        for forward in forwards:
            decided.route(forward, self.destination_of(forward)[0], f"forward of {recipient}")
        if not mailbox:
            return
        if host:
            decided.route(address, self.hosts[host], f"mailHost {host}")
        else:
            decided.route(address, *self.destination_of(address))
