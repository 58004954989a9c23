"""auth: SPF, DKIM and DMARC of every message, one Authentication-Results header, DMARC policy.

The stage checks SPF for the client address with the MAIL FROM domain (the HELO name for the null
sender), verifies every DKIM-Signature, evaluates DMARC for the From domain, and asks the sink to
add one `Authentication-Results` field for the site's authserv-id, after removing any field that
already claims that authserv-id (forged upstream, RFC 8601 section 5).

Policy: DMARC `fail` with disposition reject → the message is rejected (or quarantined, with
`dmarc_reject = "quarantine"`); disposition quarantine → `dmarc_quarantine: true` in the details
for the spam stage, and the message goes on. Mail from an authenticated session or a trusted
network, and mail the gateway writes itself (DSNs, notices, digests), gets the header but no enforcement. DNS temporary failures are `temperror` results: they
are recorded, never enforced, and the message goes on (checks/modules in consumers/stages/authn/).

The From domain DMARC evaluates is the author domain of the parsed message every stage shares
(`pipeline.mail.headers`: exactly one From field, readable, all its addresses in one domain; else
DMARC is `permerror` with the reason); DKIM verifies the stored bytes as they are. Both come from the
process's one `pipeline.mail.reader`, which reads the blob once and off the event loop.
"""
from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass, field

from consumers.stages.authn.dkim import DkimOutcome, verify_signatures
from consumers.stages.authn.dmarc import DmarcOutcome, evaluate, sample_of
from consumers.stages.authn.header import HEADER_NAME, authentication_results
from consumers.stages.authn.spf import SpfOutcome, check_host
from pipeline.clients.dns import Resolver, normalize_ip
from pipeline.mail.headers import Authors
from pipeline.mail.inject import sent_by_gateway
from pipeline.mail.reader import message_reader
from pipeline.registry import register
from pipeline.settings import ConfigError
from pipeline.stage import Outcome, StageContext, Work
from schemas.codec import plain
from schemas.events import Edit, Verdict
from schemas.stages.auth import AuthDetails, DkimDetails, DmarcDetails, SpfDetails

__all__ = ["AuthStage", "AuthSettings"]

DMARC_REJECT_ACTIONS = ("reject", "quarantine")


@dataclass(frozen=True, slots=True)
class AuthSettings:
    authserv_id: str = ""  # empty: the ingress hostname
    dmarc_reject: str = "reject"  # what a DMARC fail under p=reject does: "reject" or "quarantine"
    # clients whose mail is checked and labelled but never rejected or flagged (besides authenticated
    # sessions and ingress.relay_networks)
    trusted_networks: list[str] = field(default_factory=list)
    max_dkim_signatures: int = 10  # signatures verified per message; more are "neutral"
    dkim_partial_body: bool = False  # accept signatures whose l= leaves part of the body unsigned
    remove_forged_results: bool = True  # drop Authentication-Results fields with our authserv-id

    def __post_init__(self) -> None:
        if self.dmarc_reject not in DMARC_REJECT_ACTIONS:
            raise ConfigError(f"stages.auth.dmarc_reject: expected one of {', '.join(DMARC_REJECT_ACTIONS)}, "
                              f"got {self.dmarc_reject!r}")
        if self.max_dkim_signatures < 1:
            raise ConfigError("stages.auth.max_dkim_signatures: must be at least 1")
        for network in self.trusted_networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ConfigError(f"stages.auth.trusted_networks: not a network: {network!r}") from None


def _networks(texts: list[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(t, strict=False) for t in texts]


@register
class AuthStage:
    name = "auth"
    description = "SPF, DKIM and DMARC; adds Authentication-Results; enforces DMARC reject/quarantine"
    Settings = AuthSettings

    def __init__(self, settings: AuthSettings, context: StageContext) -> None:
        self.settings = settings
        self.reader = message_reader(context.blobs, context.settings.message)
        self.authserv_id = settings.authserv_id or context.settings.ingress.hostname or "localhost"
        self.trusted = _networks([*settings.trusted_networks, *context.settings.ingress.relay_networks])
        self.resolver = Resolver.from_settings(context.settings.dns)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        await self.resolver.close()

    def _not_enforced_because(self, work: Work) -> str:
        if sent_by_gateway(work.message):  # from 127.0.0.1 in our own domain's name: SPF cannot pass
            return f"written by the gateway itself ({work.message.listener})"
        client = work.message.client
        if client.authenticated_as:
            return f"authenticated as {client.authenticated_as}"
        try:
            address = normalize_ip(client.ip)
        except ValueError:
            return ""
        if any(address in network for network in self.trusted):
            return f"trusted network ({address})"
        return ""

    async def _dmarc(self, authors: Authors, work: Work, spf: SpfOutcome, dkim: list[DkimOutcome]) -> DmarcOutcome:
        if not authors.domain:
            return DmarcOutcome("permerror", reason=authors.no_domain_because)
        return await evaluate(self.resolver, authors.domain, spf, dkim, sample_of(work.message.message_id))

    async def process(self, work: Work) -> Outcome:
        message = work.message
        parsed = await self.reader.parsed(message.blob, content=False)  # the From and the stored bytes
        spf, dkim = await asyncio.gather(
            check_host(self.resolver, message.client.ip, message.envelope.mail_from, message.client.helo),
            verify_signatures(self.resolver, parsed.raw, max_signatures=self.settings.max_dkim_signatures,
                              allow_partial_body=self.settings.dkim_partial_body))
        dmarc = await self._dmarc(parsed.authors, work, spf, dkim)
        header = authentication_results(self.authserv_id, spf, dkim, dmarc, message.client.authenticated_as)
        return self._decide(work, spf, dkim, dmarc, header)

    def _edits(self, header: str) -> list[Edit]:
        edits = []
        if self.settings.remove_forged_results:
            edits.append(Edit(stage=self.name, kind="remove_header", name=HEADER_NAME, value=self.authserv_id))
        edits.append(Edit(stage=self.name, kind="add_header", name=HEADER_NAME, value=header))
        return edits

    def _decide(self, work: Work, spf: SpfOutcome, dkim: list[DkimOutcome], dmarc: DmarcOutcome,
                header: str) -> Outcome:
        skip = self._not_enforced_because(work)
        failed = dmarc.result == "fail" and not skip
        reject = failed and dmarc.disposition == "reject"
        flag = failed and dmarc.disposition == "quarantine"
        action = "none"
        if reject:
            action = self.settings.dmarc_reject
        elif flag:
            action = "quarantine_flag"
        details = AuthDetails(
            authserv_id=self.authserv_id,
            spf=SpfDetails(result=spf.result, domain=spf.domain, identity=spf.identity, reason=spf.reason,
                           lookups=spf.lookups),
            dkim=[DkimDetails(result=d.result, domain=d.domain, selector=d.selector, algorithm=d.algorithm,
                              reason=d.reason) for d in dkim],
            dmarc=DmarcDetails(result=dmarc.result, from_domain=dmarc.from_domain, policy_domain=dmarc.policy_domain,
                               policy=dmarc.policy, disposition=dmarc.disposition, spf_aligned=dmarc.spf_aligned,
                               dkim_aligned=dmarc.dkim_aligned, reason=dmarc.reason),
            enforced=not skip, not_enforced_because=skip, dmarc_quarantine=flag, action=action)
        verdict = Verdict.FAIL if dmarc.result == "fail" else Verdict.PASS
        reason = ""
        if reject:
            reason = (f"DMARC policy of {dmarc.policy_domain} is {dmarc.policy}: {dmarc.reason}")
        return Outcome(
            verdict=verdict, details=plain(details), edits=self._edits(header),
            reject=reason if action == "reject" else "", quarantine=reason if action == "quarantine" else "")
