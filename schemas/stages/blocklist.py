"""Details the blocklist stage records in its result."""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["BlocklistDetails", "Listing", "SiteListHit"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Listing:
    """One DNS list that lists something of the message."""

    check: str  # "uribl" (a link's domain), "rhsbl" (the From domain), "dnsbl" (the client IP, re-checked)
    zone: str
    subject: str  # the domain or address that is listed
    codes: list[str] = field(default_factory=list)  # the return codes that matched
    weight: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteListHit:
    """An entry of the site's own block or allow list that matched."""

    list: str  # "block" or "allow"
    kind: str  # address, domain, cidr, sha256
    value: str  # the entry
    subject: str  # what matched it: the sender, a link host, the client IP, an attachment digest
    source: str  # client_ip, sender, from_domain, url_domain, attachment
    comment: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class BlocklistDetails:
    score: int = 0  # sum of the weights of the listings (each list entry counted once)
    threshold: int = 1  # the score at which the verdict is fail
    listed: list[Listing] = field(default_factory=list)
    site_block: SiteListHit | None = None  # set when the message was rejected by the site's block list
    allowlisted: SiteListHit | None = None  # set when the DNS lookups were skipped for an allow-list entry
    url_domains: list[str] = field(default_factory=list)  # registrable domains looked up in the URIBLs
    from_domains: list[str] = field(default_factory=list)  # looked up in the RHSBLs
    dnsbl_rechecked: str = ""  # the client IP, when the ingress skipped its DNSBL check and it was re-checked
    attachments: int = 0  # attachment digests compared with the block list
    skipped: list[str] = field(default_factory=list)  # lookups that failed temporarily (on_error = "skip")
    truncated: list[str] = field(default_factory=list)  # caps hit: [message] keys (max_parts, ...), max_domains
