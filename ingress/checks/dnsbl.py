"""DNS blocklists of the client address, weighted like Postfix postscreen's `dnsbl_sites`.

At connect, the client address (IPv4 octets or IPv6 nibbles, reversed, RFC 5782) is looked up in
every configured zone at once. Each `[[checks.dnsbl.sites]]` entry whose return-code filter
matches adds its weight once (see `pipeline.clients.dnslists` for the entry format); a sum at or
over `threshold` refuses the session::

    554 5.7.1 Service unavailable; client [192.0.2.7] blocked using zen.dnsbl.test

(reason `dnsbl_listed`; the detail lists every zone, answer and weight). The list named is the
matching entry with the largest weight, by its `name` if it has one.

A lookup that fails temporarily (timeout, SERVFAIL, REFUSED) cannot be told from "listed", so
unless the score already reaches the threshold the client gets `451 4.7.1` (reason
`dnsbl_tempfail`) and retries later; `on_error = "skip"` lets it through instead and notes
`dnsbl = "skipped_tempfail"`. A score above zero but under the threshold is noted as
`dnsbl = "score=<n>"`.

Not checked: allowlisted clients (`ingress.client_allowlist`), authenticated sessions and other
listeners than `mx`; the note says which (`allowlisted`, `authenticated`, `not_mx`). With no
sites configured (the default) the check does nothing.

Settings (`[checks.dnsbl]`):
    sites      array of tables {zone, codes = [], weight = 1, name = ""}; default none
    threshold  score at which the client is refused (default 1, as postscreen_dnsbl_threshold)
    on_error   "tempfail" (default) or "skip"
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ingress.checks import PASS, Check, CheckContext, Decision, refuse, register_check
from pipeline.clients.dns import normalize_ip
from pipeline.clients.dnslists import ListSite, evaluate, validate_list_settings

__all__ = ["DnsblCheck", "DnsblSettings"]

log = logging.getLogger(__name__)

LISTED = "554 5.7.1 Service unavailable; client [{ip}] blocked using {list}"
TEMPFAIL = "451 4.7.1 Service temporarily unavailable; try again later"


@dataclass(frozen=True, slots=True)
class DnsblSettings:
    sites: list[ListSite] = field(default_factory=list)
    threshold: int = 1
    on_error: str = "tempfail"  # or "skip"

    def __post_init__(self) -> None:
        validate_list_settings("dnsbl", self.sites, self.threshold, self.on_error)


@register_check
class DnsblCheck(Check):
    name = "dnsbl"
    description = "DNS blocklists of the client IP, weighted like postscreen's dnsbl_sites"
    Settings = DnsblSettings

    async def start(self) -> None:
        if not self.settings.sites:
            log.info("dnsbl: no [[checks.dnsbl.sites]] configured; the check passes every client")

    async def connect(self, ctx: CheckContext) -> Decision:
        if ctx.skip_for_standing("dnsbl"):
            return PASS
        if not self.settings.sites:
            return PASS
        try:
            ip = str(normalize_ip(ctx.client_ip))
        except ValueError:
            ctx.notes["dnsbl"] = "no_client_address"
            return PASS
        result = await evaluate(self.settings.sites, [ip], self.services.resolver.dnsbl)
        threshold = self.settings.threshold
        if result.score >= threshold:
            reply = LISTED.format(ip=ip, list=result.top.site.shown_name)
            return refuse(reply, "dnsbl_listed", result.detail(threshold))
        if result.errors:
            if self.settings.on_error == "skip":
                ctx.notes["dnsbl"] = "skipped_tempfail"
                return PASS
            return refuse(TEMPFAIL, "dnsbl_tempfail", result.detail(threshold))
        if result.score:
            ctx.notes["dnsbl"] = f"score={result.score}"
        return PASS
