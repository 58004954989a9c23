"""blocklist: the site's own block and allow lists, URIBL/RHSBL lookups, and a DNSBL re-check.

Everything it looks at in the message comes from the parsed view every stage shares
(`pipeline.mail.message`, read once per process by `pipeline.mail.reader`): the link hosts, the
From domains (every From mailbox, readable or not) and the attachment digests. For each message, in
this order:

1. **The site's block list** (`poststelle list`, `pipeline.state.sitelists`): the client IP (cidr
   entries), the envelope sender (address, or its domain), the header From domains, the link hosts
   of the text and HTML parts (domain entries match a name and everything under it) and the SHA-256
   of every attachment. The first hit rejects the message for all recipients, reason
   ``site block list: <what> <entry> (<matched>): <comment>`` — a terminal `rejected` event. Not for
   mail the gateway writes itself (`pipeline.mail.inject.sent_by_gateway`): a digest quotes held spam.
2. **The site's allow list**: the client IP (cidr) or the envelope sender (address or domain). A hit
   skips the DNS lookups below; the verdict is `pass` with `allowlisted` in the details.
3. **DNS lists**, all at once: the registrable domains of the links (of the first `max_domains`
   distinct link hosts: each costs a query per zone, so this stage bounds them further than the
   view's `[message] max_links`) in the
   `uribl` zones, the header From domains in the `rhsbl` zones, and — only when the ingress let the
   message through after a DNS timeout (`received.skipped_checks` holds "dnsbl") — the client IP in
   the `dnsbl` zones (by default the ingress's `[[checks.dnsbl.sites]]`). Sites, return codes and
   weights work as at SMTP time (`pipeline.clients.dnslists`): every matching site adds its weight once per
   kind of lookup; a score at or over `threshold` is the verdict `fail` with every listing (zone,
   domain or IP, codes) in the details and the score in the result, for the spam stage. A listing
   never rejects here.

A lookup that fails temporarily (timeout, SERVFAIL), unless the score already reaches the threshold:
`on_error = "tempfail"` raises `TemporaryFailure` (the runner retries the message later, it is never
passed unchecked); `on_error = "skip"` records the lookups in `skipped` with the verdict `skip`.

Until the site's lists are replayed from Kafka the stage answers `TemporaryFailure` (a block list
that is not loaded yet must not let mail through). A blob that is gone is a poison message. The caps
the parse stopped at, and ``max_domains`` when hit, are listed in the details' `truncated`.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from pipeline.clients.dns import Answer, Resolver, normalize_ip
from pipeline.clients.dnslists import ListSite, Lookup, evaluate, validate_list_settings
from pipeline.mail.domains import InvalidName, normalize_address
from pipeline.mail.inject import sent_by_gateway
from pipeline.mail.message import ParsedMessage
from pipeline.mail.reader import message_reader
from pipeline.registry import register
from pipeline.settings import ConfigError
from pipeline.stage import Outcome, StageContext, TemporaryFailure, Work
from pipeline.state.sitelists import ALLOW, BLOCK, Match, SiteLists, kafka_transport
from schemas.codec import plain
from schemas.events import Received, Verdict
from schemas.stages.blocklist import BlocklistDetails, Listing, SiteListHit

__all__ = ["BlocklistStage", "BlocklistSettings"]

log = logging.getLogger(__name__)

SECTION = "blocklist"


@dataclass(frozen=True, slots=True)
class BlocklistSettings:
    uribl: list[ListSite] = field(default_factory=list)  # zones for the registrable domains of links
    rhsbl: list[ListSite] = field(default_factory=list)  # zones for the header From domains
    dnsbl: list[ListSite] = field(default_factory=list)  # re-check zones; empty: [[checks.dnsbl.sites]]
    recheck_dnsbl: bool = True  # re-check the client IP when the ingress skipped its DNSBL check
    threshold: int = 1  # score at which the verdict is fail
    on_error: str = "tempfail"  # or "skip"
    max_domains: int = 50  # distinct link hosts looked at per message (each costs DNS queries)
    site_lists: bool = True  # use the site's own lists (poststelle list); false: DNS lists only
    replay_timeout: float = 30.0  # seconds start() waits for the lists before processing answers tempfail

    MOVED_KEYS: ClassVar[dict[str, str]] = {
        "max_parts": "moved to [message] max_parts (one set of caps for every stage)",
        "max_text_bytes": "moved to [message] max_text_bytes (one set of caps for every stage)",
        "public_suffix_list": "gone: one Public Suffix List serves every stage, the publicsuffixlist package's",
    }

    def __post_init__(self) -> None:
        for key in ("uribl", "rhsbl", "dnsbl"):
            validate_list_settings(SECTION, getattr(self, key), self.threshold, self.on_error,
                                   root="stages", sites_key=key)
        if self.max_domains < 1:
            raise ConfigError(f"stages.{SECTION}.max_domains: expected at least 1, got {self.max_domains}")


@dataclass(frozen=True, slots=True)
class MessageFacts:
    """What the stage looks up, from the parsed message."""

    url_hosts: list[str]  # distinct named link hosts, in order, at most max_domains
    url_domains: list[str]  # their registrable domains (the host itself when it has none), distinct
    from_domains: list[str]  # of every From mailbox
    attachment_sha256: list[str]
    truncated: list[str]  # the caps hit: [message] keys, and max_domains


def message_facts(parsed: ParsedMessage, max_domains: int) -> MessageFacts:
    hosts = list(parsed.link_hosts)
    truncated = list(parsed.caps_hit) + (["max_domains"] if len(hosts) > max_domains else [])
    hosts = hosts[:max_domains]
    domain_of = {link.host: link.domain for link in parsed.links}
    return MessageFacts(url_hosts=hosts, url_domains=list(dict.fromkeys(domain_of[h] or h for h in hosts)),
                        from_domains=list(parsed.authors.domains),
                        attachment_sha256=[a.sha256 for a in parsed.attachments], truncated=truncated)


@dataclass(slots=True)
class _Lookups:
    """The outcome of the DNS lookups of one message."""

    listed: list[Listing] = field(default_factory=list)
    score: int = 0
    errors: list[Answer] = field(default_factory=list)


def _site_hit(match: Match, source: str) -> SiteListHit:
    e = match.entry
    return SiteListHit(list=e.list, kind=e.kind, value=e.value, subject=match.subject, source=source, comment=e.comment)


_SOURCE_TEXT = {"client_ip": "client address", "sender": "sender", "from_domain": "From domain",
                "url_domain": "link to", "attachment": "attachment sha256"}


def _reject_reason(hit: SiteListHit) -> str:
    text = f"site block list: {_SOURCE_TEXT[hit.source]} {hit.subject}"
    if hit.value != hit.subject:
        text += f" (entry {hit.kind} {hit.value})"
    return text + (f": {hit.comment}" if hit.comment else "")


def _sender(message: Received) -> str:
    try:
        return normalize_address(message.envelope.mail_from) if message.envelope.mail_from else ""
    except InvalidName:
        return ""


@register
class BlocklistStage:
    name = "blocklist"
    description = "Site block/allow lists, URIBL and RHSBL lookups of links and From, DNSBL re-check"
    Settings = BlocklistSettings

    def __init__(self, settings: BlocklistSettings, context: StageContext, *, resolver: Resolver | None = None,
                 lists: SiteLists | None = None) -> None:
        self.settings = settings
        self.reader = message_reader(context.blobs, context.settings.message)
        self.resolver = resolver or Resolver.from_settings(context.settings.dns)
        if lists is None:
            transport = kafka_transport(context.settings, client_id="sitelists-blocklist") if settings.site_lists else None
            lists = SiteLists(transport)
        self.lists = lists
        ingress_dnsbl = context.settings.checks.get("dnsbl")
        self.dnsbl_sites: list[ListSite] = list(settings.dnsbl or getattr(ingress_dnsbl, "sites", []))

    async def start(self) -> None:
        if not await self.lists.start(self.settings.replay_timeout):
            log.warning("blocklist: site lists not replayed yet; messages wait until they are")

    async def close(self) -> None:
        await self.lists.close()
        await self.resolver.close()

    # -- the decision -------------------------------------------------------------------------

    async def process(self, work: Work) -> Outcome:
        if not self.lists.ready:
            raise TemporaryFailure("the site's block and allow lists are not replayed from Kafka yet")
        message = work.message
        facts = message_facts(await self.reader.parsed(message.blob), self.settings.max_domains)
        sender = _sender(message)
        details = BlocklistDetails(threshold=self.settings.threshold, url_domains=facts.url_domains,
                                   from_domains=facts.from_domains, attachments=len(facts.attachment_sha256),
                                   truncated=facts.truncated)
        # mail the gateway writes itself (a digest quotes held spam) is looked up, never refused
        blocked = None if sent_by_gateway(message) else self.site_block(message.client.ip, sender, facts)
        if blocked is not None:
            details = dataclasses.replace(details, site_block=blocked)
            return Outcome(verdict=Verdict.FAIL, details=plain(details), reject=_reject_reason(blocked))
        allowed = self.site_allow(message.client.ip, sender)
        if allowed is not None:
            return Outcome(verdict=Verdict.PASS, details=plain(dataclasses.replace(details, allowlisted=allowed)))
        recheck_ip = self._recheck_ip(message)
        found = await self.lookups(facts, recheck_ip)
        details = dataclasses.replace(details, score=found.score, listed=found.listed, dnsbl_rechecked=recheck_ip)
        return self._verdict(found, details)

    def site_block(self, client_ip: str, sender: str, facts: MessageFacts) -> SiteListHit | None:
        """The first entry of the site's block list the message hits (see the module docstring)."""
        for match, source in self._block_matches(client_ip, sender, facts):
            if match is not None:
                return _site_hit(match, source)
        return None

    def _block_matches(self, client_ip: str, sender: str, facts: MessageFacts) -> Iterator[tuple[Match | None, str]]:
        lists = self.lists
        yield lists.match_ip(BLOCK, client_ip), "client_ip"
        if sender:
            yield lists.match_sender(BLOCK, sender), "sender"
        for domain in facts.from_domains:
            yield lists.match_domain(BLOCK, domain), "from_domain"
        for host in facts.url_hosts:
            yield lists.match_domain(BLOCK, host), "url_domain"
        for digest in facts.attachment_sha256:
            yield lists.match_sha256(BLOCK, digest), "attachment"

    def site_allow(self, client_ip: str, sender: str) -> SiteListHit | None:
        match = self.lists.match_ip(ALLOW, client_ip)
        if match is not None:
            return _site_hit(match, "client_ip")
        match = self.lists.match_sender(ALLOW, sender) if sender else None
        return _site_hit(match, "sender") if match is not None else None

    def _recheck_ip(self, message: Received) -> str:
        if not (self.settings.recheck_dnsbl and self.dnsbl_sites and "dnsbl" in message.skipped_checks):
            return ""
        try:
            return str(normalize_ip(message.client.ip))
        except ValueError:
            return ""

    async def lookups(self, facts: MessageFacts, recheck_ip: str) -> _Lookups:
        """Every DNS list lookup of one message, concurrently; listings, score and failures."""
        s = self.settings
        groups: list[tuple[str, Sequence[ListSite], list[str], Lookup]] = [
            ("uribl", s.uribl, facts.url_domains, self.resolver.rhsbl),
            ("rhsbl", s.rhsbl, facts.from_domains, self.resolver.rhsbl),
            ("dnsbl", self.dnsbl_sites, [recheck_ip] if recheck_ip else [], self.resolver.dnsbl),
        ]
        groups = [g for g in groups if g[1] and g[2]]
        results = await asyncio.gather(*(evaluate(sites, [subject], lookup)
                                         for _, sites, subjects, lookup in groups for subject in subjects))
        found = _Lookups()
        index = 0
        for check, _sites, subjects, _lookup in groups:
            counted: set[int] = set()  # ids of the sites whose weight is in the score
            for _subject in subjects:
                result = results[index]
                index += 1
                found.errors.extend(result.errors)
                for hit in result.hits:
                    found.listed.append(Listing(check=check, zone=hit.site.zone, subject=hit.subject,
                                                codes=list(hit.records), weight=hit.site.weight))
                    if id(hit.site) not in counted:
                        counted.add(id(hit.site))
                        found.score += hit.site.weight
        return found

    def _verdict(self, found: _Lookups, details: BlocklistDetails) -> Outcome:
        threshold = self.settings.threshold
        if found.score >= threshold:
            return Outcome(verdict=Verdict.FAIL, score=float(found.score), details=plain(details))
        if found.errors:
            failed = [answer.describe() for answer in found.errors]
            if self.settings.on_error == "tempfail":
                raise TemporaryFailure(f"DNS list lookups failed temporarily: {'; '.join(failed)}")
            details = dataclasses.replace(details, skipped=failed)
            return Outcome(verdict=Verdict.SKIP, score=float(found.score), details=plain(details))
        return Outcome(verdict=Verdict.PASS, score=float(found.score), details=plain(details))
