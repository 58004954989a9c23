"""Built-in tests over what the earlier checks found: the signals the spam score weighs.

Each is a built-in test (`eval NAME signal(arguments)` in a rule file), so each signal is a rule
with a score a site can change in its own file. They read:

- the ingress checks' notes, `received.checks`: {"dnsbl": "score=2", "rhsbl": "score=1",
  "fcrdns": "fail", "greylist": "passed_after_retry", "relay": "authenticated", ...}, and the
  client (HELO, reverse name, authenticated user) of the `received` event;
- the earlier stages' results (their `details` are the dataclasses of `schemas/stages/` as dicts):
  blocklist (`listed`: DNSBL, RHSBL and URIBL listings), auth (SPF, DKIM, DMARC, the DMARC
  p=quarantine flag), attachment (parts held back);
- the Bayes classifier's probability (`bayes_between`: the BAYES_* bands).

A signal whose source did not run (no auth result, no note) does not fire: "unknown" is not "none".
"""
from __future__ import annotations

import ipaddress
from typing import Any

import re2

from consumers.stages.spam.builtins import builtin
from consumers.stages.spam.scan import Scan
from pipeline.mail.domains import registrable_domain

__all__ = ["note_score"]

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False
# a reverse name that says it is a pool of dial-up, DSL, cable or dynamic addresses
# (in the labels below the registrable domain)
_DYNAMIC_NAME = re2.compile(r"(?i)(?:^|[.-])(?:dyn|dynamic|dhcp|dsl|adsl|vdsl|xdsl|pool|ppp|pppoe|dial|dialup|dialin|"
                            r"cable|cpe|broadband|customer|cust|client|clients|resident|residential|dip)(?:[0-9.-]|$)",
                            _OPTIONS)


def _details(scan: Scan, stage: str) -> dict[str, Any] | None:
    result = scan.result_of(stage)
    return result.details if result is not None else None


def note_score(note: str) -> int:
    """The score of a DNS list note ("score=2" → 2; anything else → 0)."""
    head, _, value = note.partition("=")
    try:
        return int(value) if head == "score" else 0
    except ValueError:
        return 0


def _listed(scan: Scan, check: str, zone: str = "") -> bool:
    details = _details(scan, "blocklist") or {}
    return any(entry.get("check") == check and (not zone or entry.get("zone") == zone)
               for entry in details.get("listed") or [])


# ---- DNS lists -----------------------------------------------------------------------------------


@builtin("dnsbl_listed")
def dnsbl_listed(scan: Scan) -> bool:
    """The client's address is on a DNSBL (below the ingress's threshold, or found by the
    blocklist stage's second look after a DNS timeout)."""
    return note_score(scan.received.checks.get("dnsbl", "")) > 0 or _listed(scan, "dnsbl")


@builtin("rhsbl_listed")
def rhsbl_listed(scan: Scan) -> bool:
    """The sender's domain (MAIL FROM at the ingress, the From domain in the blocklist stage) is on
    a right-hand-side list."""
    return note_score(scan.received.checks.get("rhsbl", "")) > 0 or _listed(scan, "rhsbl")


@builtin("uribl_listed")
def uribl_listed(scan: Scan) -> bool:
    """A link's domain is on a URI list (below the blocklist stage's threshold)."""
    return _listed(scan, "uribl")


@builtin("listed_in")
def listed_in(scan: Scan, check: str, zone: str) -> bool:
    """One list of the blocklist stage (`check` dnsbl, rhsbl or uribl; its `zone`) lists the
    message: for a site that weighs its lists differently."""
    return _listed(scan, check, zone)


@builtin("site_allowlisted")
def site_allowlisted(scan: Scan, source: str) -> bool:
    """An entry of the site's own allow list (`poststelle list add allow`) matched, for `source`
    "client_ip" (a cidr entry: the connecting address, which cannot be forged) or "sender" (an
    address or domain entry: the envelope sender, which can)."""
    details = _details(scan, "blocklist") or {}
    return (details.get("allowlisted") or {}).get("source") == source


# ---- SPF, DKIM, DMARC (the auth stage) ------------------------------------------------------------


@builtin("spf_result")
def spf_result(scan: Scan, result: str) -> bool:
    """The SPF result is `result` (pass, fail, softfail, neutral, none, permerror, temperror)."""
    details = _details(scan, "auth")
    return details is not None and (details.get("spf") or {}).get("result") == result


@builtin("dkim_result")
def dkim_result(scan: Scan, result: str) -> bool:
    """A DKIM signature has `result` (pass, fail, ...); "none": the message has no signature."""
    details = _details(scan, "auth")
    if details is None:
        return False
    signatures = details.get("dkim") or []
    if result == "none":
        return not signatures
    return any(s.get("result") == result for s in signatures)


@builtin("dmarc_result")
def dmarc_result(scan: Scan, result: str) -> bool:
    """The DMARC result is `result` (pass: SPF or DKIM passed aligned with the From domain; fail;
    none: the From domain publishes no policy)."""
    details = _details(scan, "auth")
    return details is not None and (details.get("dmarc") or {}).get("result") == result


@builtin("dkim_aligned")
def dkim_aligned(scan: Scan) -> bool:
    """A valid DKIM signature of the From domain (aligned, as DMARC counts it)."""
    details = _details(scan, "auth")
    return details is not None and bool((details.get("dmarc") or {}).get("dkim_aligned"))


@builtin("dmarc_quarantine")
def dmarc_quarantine(scan: Scan) -> bool:
    """DMARC failed and the From domain's policy asks for quarantine (p=quarantine)."""
    details = _details(scan, "auth")
    return details is not None and bool(details.get("dmarc_quarantine"))


# ---- the client (ingress) -------------------------------------------------------------------------


@builtin("fcrdns_fail")
def fcrdns_fail(scan: Scan) -> bool:
    """The FCrDNS check found no forward-confirmed reverse name (action "note")."""
    return scan.received.checks.get("fcrdns") == "fail"


def _outside_client(scan: Scan) -> bool:
    """A client from the internet: not logged in, not a trusted network, a public address."""
    client = scan.received.client
    if client.authenticated_as or "relay" in scan.received.checks:
        return False
    try:
        address = ipaddress.ip_address(client.ip)
    except ValueError:
        return False
    return address.is_global


@builtin("rdns_none")
def rdns_none(scan: Scan) -> bool:
    """A client from the internet without a (confirmed) reverse name, when the FCrDNS check did not
    decide (it was not configured): real mail servers have one."""
    return "fcrdns" not in scan.received.checks and not scan.received.client.reverse_name and _outside_client(scan)


@builtin("rdns_dynamic")
def rdns_dynamic(scan: Scan) -> bool:
    """The client's reverse name looks like a pool of home or dynamic addresses (it holds the
    address, or a word such as dsl, dyn, pool, cable)."""
    name = scan.received.client.reverse_name.lower()
    if not name:
        return False
    ip = scan.received.client.ip
    if "." in ip:
        octets = ip.split(".")
        forms = ("-".join(octets), "-".join(reversed(octets)), ".".join(reversed(octets)), "".join(
            f"{int(o):02x}" for o in octets if o.isdigit()))
        if any(len(form) >= 7 and form in name for form in forms):
            return True
    domain = registrable_domain(name)
    labels = name[:-len(domain)].rstrip(".") if domain and name.endswith(domain) else name
    return bool(labels) and bool(_DYNAMIC_NAME.search(labels))


@builtin("helo_is_address")
def helo_is_address(scan: Scan) -> bool:
    """The HELO is an address literal or a bare address instead of the server's name."""
    helo = scan.received.client.helo.strip().strip("[]")
    try:
        ipaddress.ip_address(helo.removeprefix("IPv6:"))
    except ValueError:
        return False
    return _outside_client(scan)


@builtin("helo_not_fqdn")
def helo_not_fqdn(scan: Scan) -> bool:
    """The HELO is a name without a dot ("localhost", "PC01", "user"): not a mail server's name."""
    helo = scan.received.client.helo.strip()
    return bool(helo) and "." not in helo and not helo.startswith("[") and _outside_client(scan)


@builtin("greylist")
def greylist(scan: Scan, outcome: str) -> bool:
    """The greylisting check noted `outcome` (passed_after_retry, passed, auto_whitelisted, ...)."""
    return scan.received.checks.get("greylist") == outcome


@builtin("authenticated")
def authenticated(scan: Scan) -> bool:
    """The sender logged in (SMTP AUTH on submission): the site's own user."""
    return bool(scan.received.client.authenticated_as) or scan.received.checks.get("relay") == "authenticated"


@builtin("trusted_network")
def trusted_network(scan: Scan) -> bool:
    """The client is in the site's relay networks (ingress.relay_networks)."""
    return scan.received.checks.get("relay") == "trusted_network"


# ---- attachments ------------------------------------------------------------------------------------


@builtin("attachment_held")
def attachment_held(scan: Scan, reason: str) -> bool:
    """The attachment stage held a part back; `reason` "" for any, else the kind of reason
    (blocked_extension, double_extension, control_character, ...)."""
    details = _details(scan, "attachment") or {}
    return any(not reason or any(r.split(":", 1)[0] == reason for r in held.get("reasons") or [])
               for held in details.get("held") or [])


# ---- Bayes -------------------------------------------------------------------------------------------


@builtin("bayes_between")
def bayes_between(scan: Scan, low: float, high: float) -> bool:
    """The Bayes probability is in [low, high) (high 1.0 included); never when Bayes does not vote."""
    p = scan.bayes
    return p is not None and low <= p and (p < high or high >= 1.0)
