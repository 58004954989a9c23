"""Host names, addresses and registrable domains, written one way everywhere.

`normalize_domain` and `normalize_address` are how the site's lists, the link hosts of a message and
its From domains are compared: IDNA A-labels, lower case, no final dot. They raise `InvalidName`
(a `ValueError`) saying precisely what is wrong, which `poststelle list` shows an operator.

`registrable_domain` is the one Public Suffix List of the gateway: the copy that ships with the
`publicsuffixlist` package (offline, updated with the package; ICANN and private sections). The
links' registrable domains (what URIBLs list) and DMARC's organizational domain both come from it,
so the two can never disagree about where a domain's owner begins. A name under a suffix the list
does not know (such as ``.test``) has its last label as the suffix: ``www.bad-link.test`` →
``bad-link.test``.
"""
from __future__ import annotations

import re
from functools import lru_cache

from publicsuffixlist import PublicSuffixList

__all__ = ["InvalidName", "normalize_domain", "normalize_address", "registrable_domain"]

_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
_LOCAL_FORBIDDEN = set(' \t<>()[]\\,;:"@')


class InvalidName(ValueError):
    """Text that cannot be a DNS name or an address; the message says why."""


def normalize_domain(text: str) -> str:
    """A host or domain name as lists and DNS use it: IDNA (A-labels), lower case, no final dot.

    Raises InvalidName for anything that cannot be a DNS name (empty or overlong labels, characters
    outside letters, digits, hyphen and underscore, a label starting or ending with a hyphen).
    """
    name = text.strip().removesuffix(".")
    if not name:
        raise InvalidName("empty domain name")
    try:
        ascii_name = name.encode("idna").decode("ascii") if not name.isascii() else name
    except UnicodeError as exc:
        raise InvalidName(f"{text!r} is not a valid internationalised domain name ({exc})") from None
    ascii_name = ascii_name.lower()
    if len(ascii_name) > 253:
        raise InvalidName(f"{text!r} is longer than 253 characters")
    for label in ascii_name.split("."):
        if not label:
            raise InvalidName(f"{text!r} has an empty label")
        if not _LABEL.fullmatch(label):
            raise InvalidName(f"{text!r}: label {label!r} must be 1-63 letters, digits, '-' or '_', "
                              "not starting or ending with '-'")
    return ascii_name


def normalize_address(text: str) -> str:
    """An email address as lists compare it: local part and domain lower case, domain IDNA."""
    local, at, domain = text.strip().rpartition("@")
    if not at or not local:
        raise InvalidName(f"{text!r} is not an address: expected local-part@domain")
    bad = sorted(set(local) & _LOCAL_FORBIDDEN) or [c for c in local if ord(c) < 32]
    if bad:
        raise InvalidName(f"{text!r}: the local part holds {''.join(bad)!r}, which an unquoted address cannot")
    if len(local) > 64:
        raise InvalidName(f"{text!r}: the local part is longer than 64 characters")
    try:
        return f"{local.lower()}@{normalize_domain(domain)}"
    except InvalidName as exc:
        raise InvalidName(f"{text!r}: bad domain: {exc}") from None


@lru_cache(maxsize=1)
def _suffixes() -> PublicSuffixList:
    return PublicSuffixList()  # the package's own copy of the list: no file, no network


@lru_cache(maxsize=10_000)
def registrable_domain(domain: str) -> str:
    """The registrable (organizational, RFC 7489 3.2) domain: one label below the public suffix.

    "" when the name is itself a public suffix (``co.uk``) or a single label.
    """
    return _suffixes().privatesuffix(domain.lower().rstrip(".")) or ""
