"""The Authentication-Results header field (RFC 8601) the auth stage adds."""
from __future__ import annotations

import re

from consumers.stages.authn.dkim import DkimOutcome
from consumers.stages.authn.dmarc import DmarcOutcome
from consumers.stages.authn.spf import SpfOutcome

__all__ = ["HEADER_NAME", "authentication_results", "quote_value"]

HEADER_NAME = "Authentication-Results"
_TOKEN = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`{|}~@]+$")  # RFC 2045 token, plus "@" as in a local-part@domain


def quote_value(value: str) -> str:
    """A property value as a token where it is one, else a quoted-string (RFC 8601 2.2)."""
    if value and _TOKEN.match(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _spf(spf: SpfOutcome) -> str:
    ptype = "smtp.mailfrom" if spf.identity == "mailfrom" else "smtp.helo"
    return f"spf={spf.result} {ptype}={quote_value(spf.domain or 'unknown')}"


def _dkim(outcome: DkimOutcome) -> str:
    parts = [f"dkim={outcome.result}"]
    if outcome.reason:
        parts.append(f"reason={quote_value(outcome.reason[:120])}")
    if outcome.domain:
        parts.append(f"header.d={quote_value(outcome.domain)}")
    if outcome.selector:
        parts.append(f"header.s={quote_value(outcome.selector)}")
    if outcome.signature_start:
        parts.append(f"header.b={quote_value(outcome.signature_start)}")
    return " ".join(parts)


def _dmarc(dmarc: DmarcOutcome) -> str:
    comment = f" (p={dmarc.policy} dis={dmarc.disposition})" if dmarc.policy else ""
    return f"dmarc={dmarc.result}{comment} header.from={quote_value(dmarc.from_domain or 'unknown')}"


def authentication_results(authserv_id: str, spf: SpfOutcome, dkim: list[DkimOutcome], dmarc: DmarcOutcome,
                           authenticated_as: str = "") -> str:
    """The field's value: "<authserv-id>; auth=...; spf=...; dkim=...; dmarc=..." (one dkim= per signature)."""
    results = []
    if authenticated_as:
        results.append(f"auth=pass smtp.auth={quote_value(authenticated_as)}")
    results.append(_spf(spf))
    results.extend(_dkim(d) for d in dkim) if dkim else results.append("dkim=none")
    results.append(_dmarc(dmarc))
    return "; ".join([authserv_id, *results])
