"""Right-hand-side blocklists (RHSBL, RFC 5782 2.2) of the MAIL FROM domain, and optionally the HELO name.

At MAIL FROM the sender's domain is looked up as `<domain>.<zone>` in every configured zone at
once (with `check_helo = true` also the HELO name, when it is a domain name with a dot). The sites
and weights work as in the `dnsbl` check (see `pipeline.clients.dnslists`); each site counts once
even when both names are listed. A sum at or over `threshold` refuses the sender:

    554 5.7.1 Sender address rejected: domain listed by dbl.rhsbl.test    reason rhsbl_listed
    554 5.7.1 Helo command rejected: host name listed by dbl.rhsbl.test   (when only the HELO name is)

A temporary lookup failure, unless the score already reaches the threshold, answers `451 4.7.1`
(reason `rhsbl_tempfail`); `on_error = "skip"` lets the sender through with the note
`rhsbl = "skipped_tempfail"`. A score above zero under the threshold is noted as `rhsbl = "score=<n>"`.

The null sender <> passes, and so does an address literal (there is no domain to look up); a
MAIL FROM without a usable domain is refused `501 5.1.7` (reason `sender_malformed`). Not checked:
allowlisted clients, authenticated sessions, other listeners than `mx`. With no sites configured
(the default) the check does nothing.

Settings (`[checks.rhsbl]`):
    sites       array of tables {zone, codes = [], weight = 1, name = ""}; default none
    threshold   default 1
    on_error    "tempfail" (default) or "skip"
    check_helo  also look up the HELO name (default false)
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ingress.checks import PASS, Check, CheckContext, Decision, refuse, register_check
from pipeline.clients.dnslists import (
    ListSite,
    SenderSyntaxError,
    evaluate,
    sender_domain,
    validate_list_settings,
)

__all__ = ["RhsblCheck", "RhsblSettings"]

log = logging.getLogger(__name__)

LISTED_SENDER = "554 5.7.1 Sender address rejected: domain listed by {list}"
LISTED_HELO = "554 5.7.1 Helo command rejected: host name listed by {list}"
TEMPFAIL = "451 4.7.1 Sender address rejected: Temporary failure checking the domain; try again later"
MALFORMED = "501 5.1.7 Bad sender address syntax"


@dataclass(frozen=True, slots=True)
class RhsblSettings:
    sites: list[ListSite] = field(default_factory=list)
    threshold: int = 1
    on_error: str = "tempfail"  # or "skip"
    check_helo: bool = False

    def __post_init__(self) -> None:
        validate_list_settings("rhsbl", self.sites, self.threshold, self.on_error)


def helo_domain(helo: str) -> str:
    """The HELO name if it is a domain name worth looking up ("" for literals and bare words)."""
    name = helo.strip().removesuffix(".").lower()
    if "." not in name or name.startswith("["):
        return ""
    try:
        return sender_domain(f"helo@{name}")
    except SenderSyntaxError:
        return ""


@register_check
class RhsblCheck(Check):
    name = "rhsbl"
    description = "right-hand-side blocklists of the MAIL FROM domain"
    Settings = RhsblSettings

    async def start(self) -> None:
        if not self.settings.sites:
            log.info("rhsbl: no [[checks.rhsbl.sites]] configured; the check passes every sender")

    async def mail(self, ctx: CheckContext, sender: str) -> Decision:
        if sender == "":
            return PASS
        if ctx.skip_for_standing("rhsbl"):
            return PASS
        if not self.settings.sites:
            return PASS
        try:
            domain = sender_domain(sender)
        except SenderSyntaxError as exc:
            return refuse(MALFORMED, "sender_malformed", f"{sender!r}: {exc}")
        subjects = [] if domain.startswith("[") else [domain]
        helo = helo_domain(ctx.helo) if self.settings.check_helo else ""
        if helo and helo not in subjects:
            subjects.append(helo)
        if not subjects:
            return PASS
        result = await evaluate(self.settings.sites, subjects, self.services.resolver.rhsbl)
        threshold = self.settings.threshold
        if result.score >= threshold:
            top = result.top
            template = LISTED_SENDER if top.subject == domain else LISTED_HELO
            return refuse(template.format(list=top.site.shown_name), "rhsbl_listed", result.detail(threshold))
        if result.errors:
            if self.settings.on_error == "skip":
                ctx.notes["rhsbl"] = "skipped_tempfail"
                return PASS
            return refuse(TEMPFAIL, "rhsbl_tempfail", result.detail(threshold))
        if result.score:
            ctx.notes["rhsbl"] = f"score={result.score}"
        return PASS
