"""DMARC (RFC 7489): the From domain, policy discovery, identifier alignment and the disposition.

The From domain is the parsed message's author domain (`pipeline.mail.headers`, the one From
policy). Policy discovery asks `_dmarc.<From domain>` and, when that has no record,
`_dmarc.<organizational domain>` (`pipeline.mail.domains.registrable_domain`, the gateway's one
Public Suffix List; under a suffix the list does not know, such as .test, the last label is the
suffix). Alignment is relaxed (same organizational
domain) or strict (same domain) per `aspf` / `adkim`. `pct` is honoured with a sample drawn from the
message id, so a retried message gets the same disposition: outside the sample, reject becomes
quarantine and quarantine becomes none (RFC 7489 6.6.4).

A DNS temporary failure in discovery is `temperror`; so is a would-be `fail` when an SPF or DKIM
result that could have aligned was itself a `temperror` (a retry might pass): no policy is enforced
on a temperror.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

from consumers.stages.authn.dkim import DkimOutcome
from consumers.stages.authn.spf import SpfOutcome
from pipeline.clients.dns import BadName, Resolver
from pipeline.mail.domains import registrable_domain

__all__ = ["DmarcResult", "Disposition", "DmarcRecord", "DmarcOutcome", "organizational_domain", "parse_record",
           "evaluate", "sample_of"]

DmarcResult = Literal["pass", "fail", "none", "temperror", "permerror"]
Disposition = Literal["none", "quarantine", "reject"]
_POLICIES = ("none", "quarantine", "reject")


def organizational_domain(domain: str) -> str:
    """The registered domain: one label below the public suffix (RFC 7489 3.2); a suffix itself stays."""
    return registrable_domain(domain) or domain.lower().rstrip(".")


def aligned(identifier: str, from_domain: str, mode: str) -> bool:
    identifier, from_domain = identifier.lower().rstrip("."), from_domain.lower().rstrip(".")
    if mode == "s":
        return identifier == from_domain
    return organizational_domain(identifier) == organizational_domain(from_domain)


@dataclass(frozen=True, slots=True)
class DmarcRecord:
    domain: str  # where it was found
    p: Disposition
    sp: Disposition
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100


def parse_record(text: str, domain: str) -> DmarcRecord | None:
    """A DMARC record, or None when `text` is not one (first tag must be v=DMARC1)."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, eq, value = part.partition("=")
        if eq:
            tags.setdefault(name.strip().lower(), value.strip())
    first = text.split(";", 1)[0].replace(" ", "")
    if first != "v=DMARC1":
        return None
    p = tags.get("p", "").lower()
    p = p if p in _POLICIES else "none"  # RFC 7489 6.6.3: missing or invalid p treated as none
    sp = tags.get("sp", "").lower()
    sp = sp if sp in _POLICIES else p
    adkim = tags.get("adkim", "r").lower()
    aspf = tags.get("aspf", "r").lower()
    try:
        pct = min(100, max(0, int(tags.get("pct", "100"))))
    except ValueError:
        pct = 100
    return DmarcRecord(domain, p, sp, adkim if adkim in ("r", "s") else "r", aspf if aspf in ("r", "s") else "r", pct)


class _TempError(Exception):
    pass


async def _record_at(resolver: Resolver, domain: str) -> DmarcRecord | None:
    try:
        answer = await resolver.txt(f"_dmarc.{domain}")
    except BadName:
        return None
    if answer.tempfail:
        raise _TempError(answer.describe())
    records = [r for r in (parse_record(t, domain) for t in answer.records) if r] if answer.ok else []
    return records[0] if len(records) == 1 else None  # several records: no policy (RFC 7489 6.6.3)


async def discover_policy(resolver: Resolver, from_domain: str) -> DmarcRecord | None:
    record = await _record_at(resolver, from_domain)
    org = organizational_domain(from_domain)
    if record is None and org != from_domain:
        record = await _record_at(resolver, org)
    return record


@dataclass(frozen=True, slots=True)
class DmarcOutcome:
    result: DmarcResult
    from_domain: str = ""
    policy_domain: str = ""
    policy: Disposition | Literal[""] = ""  # the domain's requested policy for this message (p or sp)
    disposition: Disposition = "none"  # what to do, after pct
    spf_aligned: bool = False
    dkim_aligned: bool = False
    reason: str = ""


def sample_of(message_id: str) -> float:
    """A number in [0, 1) fixed by the message id: pct sampling that retries do not change."""
    return int.from_bytes(hashlib.sha256(message_id.encode()).digest()[:4], "big") / 2 ** 32


def _downgrade(policy: Disposition) -> Disposition:
    return "quarantine" if policy == "reject" else "none"


async def evaluate(resolver: Resolver, from_domain: str, spf: SpfOutcome, dkim: list[DkimOutcome],
                   sample: float = 0.0) -> DmarcOutcome:
    """The DMARC result of a message whose author domain is `from_domain` (`pipeline.mail.headers.Authors`)."""
    try:
        record = await discover_policy(resolver, from_domain)
    except _TempError as exc:
        return DmarcOutcome("temperror", from_domain, reason=f"policy lookup failed: {exc}")
    if record is None:
        return DmarcOutcome("none", from_domain, reason=f"no DMARC record for {from_domain}")
    policy: Disposition = record.p if record.domain == from_domain else record.sp
    spf_aligned = spf.result == "pass" and aligned(spf.domain, from_domain, record.aspf)
    dkim_aligned = any(d.result == "pass" and aligned(d.domain, from_domain, record.adkim) for d in dkim)
    common = dict(from_domain=from_domain, policy_domain=record.domain, policy=policy,
                  spf_aligned=spf_aligned, dkim_aligned=dkim_aligned)
    if spf_aligned or dkim_aligned:
        via = "SPF" if spf_aligned else "DKIM"
        return DmarcOutcome("pass", **common, reason=f"{via} aligned with {from_domain}")
    pending = (spf.result == "temperror" and aligned(spf.domain, from_domain, record.aspf)) or any(
        d.result == "temperror" and aligned(d.domain, from_domain, record.adkim) for d in dkim)
    if pending:
        return DmarcOutcome("temperror", **common, reason="an aligned SPF or DKIM check failed temporarily")
    disposition = policy if sample * 100 < record.pct else _downgrade(policy)
    return DmarcOutcome("fail", **common, disposition=disposition,
                        reason=f"neither SPF ({spf.result} for {spf.domain or '-'}) nor DKIM aligned "
                               f"with {from_domain} ({'strict' if record.adkim == 's' else 'relaxed'} DKIM, "
                               f"{'strict' if record.aspf == 's' else 'relaxed'} SPF alignment)")
