"""Details the auth stage records in its result (SPF, DKIM, DMARC and what was enforced)."""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["SpfDetails", "DkimDetails", "DmarcDetails", "AuthDetails"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SpfDetails:
    result: str  # pass fail softfail neutral none permerror temperror
    domain: str  # the domain checked
    identity: str  # "mailfrom", or "helo" for the null sender
    reason: str = ""  # the matching mechanism, or the error
    lookups: int = 0  # DNS-querying terms evaluated (limit 10)


@dataclass(frozen=True, slots=True, kw_only=True)
class DkimDetails:
    result: str  # pass fail policy neutral permerror temperror
    domain: str = ""  # d=
    selector: str = ""  # s=
    algorithm: str = ""  # a=
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class DmarcDetails:
    result: str  # pass fail none temperror permerror
    from_domain: str = ""
    policy_domain: str = ""  # where the record was found (the From domain or its organizational domain)
    policy: str = ""  # p (or sp for a subdomain): none quarantine reject; "" without a record
    disposition: str = "none"  # after pct: none quarantine reject
    spf_aligned: bool = False
    dkim_aligned: bool = False
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthDetails:
    authserv_id: str
    spf: SpfDetails
    dmarc: DmarcDetails
    dkim: list[DkimDetails] = field(default_factory=list)  # one per DKIM-Signature, top to bottom
    enforced: bool = True  # False: authenticated or trusted client, results recorded only
    not_enforced_because: str = ""
    dmarc_quarantine: bool = False  # DMARC failed under p=quarantine: for the spam stage
    action: str = "none"  # none, quarantine_flag, reject, quarantine (what the stage did)
