"""Links of a message: each URL where it was found, its host as a browser would reach it, its domain.

A link is an http, https or ftp URL, a scheme-relative one (``//host/...``) or a bare ``www.`` name.
In plain text they are found by a pattern (`URL_IN_TEXT`); in HTML they are the link attributes the
renderer collects (`pipeline.mail.htmltext`) plus the URLs in the rendered text.

The host is read the way a browser's URL parser (WHATWG) reads it, because that is where a click
goes: tabs and line breaks inside the URL are dropped, backslashes count as slashes and any number of
slashes may follow the scheme (``http:\\\\evil.test``), user info is not the host
(``http://bank.test@evil.test/``), percent-escapes in the host are undone (``%65vil.test``), a host
whose last label is a number is an IPv4 address in any of its forms (``0x7f.1``). Names are then
normalised (IDNA A-labels, lower case, no final dot, `pipeline.mail.domains`), and the registrable
domain is taken from the one Public Suffix List. A host that is an IP address has no domain.
"""
from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote, urlsplit

from pipeline.mail.domains import InvalidName, normalize_domain, registrable_domain

__all__ = ["Link", "URL_IN_TEXT", "is_link_url", "read_host", "make_link", "urls_in_text"]

URL_IN_TEXT = re.compile(r"""(?i)\b(?:(?:https?|ftp)://|www\.)[^\s<>"'`{}|\\^\[\]]+""")
SCHEMES = ("http", "https", "ftp")
_TRAILING_PUNCTUATION = ".,;:!?)>'\""
_SCHEME = re.compile(r"(?i)(https?|ftp):[/\\]*")
_DROPPED = str.maketrans("", "", "\t\r\n")
_C0_AND_SPACE = "".join(map(chr, range(0x21)))
_IPV4_FORM = re.compile(r"[0-9a-fA-FxX.]+")  # what a browser's IPv4 parser may read (0x7f.1, 2130706433)
_CACHED_URL_CHARS = 2048  # longer URLs are read each time, so the cache stays small


@dataclass(frozen=True, slots=True)
class Link:
    url: str  # as found (HTML: entity-decoded), without tabs and line breaks
    host: str  # normalised name or IP address; "" when the URL has no usable host
    domain: str  # registrable domain of a named host; "" for IP addresses and public suffixes
    part: str  # the MIME part path
    source: str  # "text", or the HTML attribute: href, src, action, formaction, background
    text: str = ""  # what an HTML <a>/<area> shows for it
    ip: bool = False  # the host is an IP address

    @property
    def named(self) -> bool:
        """A host that is a DNS name of at least two labels: what domain lists can list."""
        return bool(self.host) and not self.ip and "." in self.host


def _clean(url: str) -> str:
    return url.strip(_C0_AND_SPACE).translate(_DROPPED)


def is_link_url(value: str) -> bool:
    """Whether an attribute value is a link this module reads (absolute, scheme-relative or www.)."""
    text = _clean(value)
    return bool(_SCHEME.match(text)) or text.startswith(("//", "\\\\")) or text[:4].lower() == "www."


def _ip(host: str) -> str:
    """The address text when `host` is an IP address (any IPv4 form a browser accepts), else ""."""
    if ":" in host:
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            return ""
    last = host.rsplit(".", 1)[-1]
    if last and (last.isdigit() or last[:2].lower() == "0x") and _IPV4_FORM.fullmatch(host):
        try:
            return socket.inet_ntoa(socket.inet_aton(host))  # 1.2.3.4, 0x7f.1, 2130706433, 0177.0.0.1
        except OSError:
            return ""
    return ""


def read_host(url: str) -> tuple[str, bool]:
    """(host, is_ip) of a link URL, as a browser reads it; ("", False) when there is none."""
    return _read_host_cached(url) if len(url) <= _CACHED_URL_CHARS else _read_host(url)


@lru_cache(maxsize=4096)
def _read_host_cached(url: str) -> tuple[str, bool]:
    return _read_host(url)


def _read_host(url: str) -> tuple[str, bool]:
    text = _clean(url)
    scheme = _SCHEME.match(text)
    if scheme:
        text = f"{scheme.group(1).lower()}://{text[scheme.end():]}"
    elif text.startswith(("//", "\\\\")):
        text = "http:" + text
    elif text[:4].lower() == "www.":
        text = "http://" + text
    else:
        return "", False
    text = text.replace("\\", "/")
    try:
        host = urlsplit(text).hostname or ""
    except ValueError:  # a bad IPv6 literal
        return "", False
    host = unquote(host).strip(".")
    if not host:
        return "", False
    address = _ip(host.strip("[]"))
    if address:
        return address, True
    try:
        return normalize_domain(host), False
    except InvalidName:
        return "", False


def make_link(url: str, part: str, source: str, text: str = "") -> Link:
    cleaned = _clean(url)
    host, ip = read_host(cleaned)
    domain = "" if ip or not host else registrable_domain(host)
    return Link(url=cleaned, host=host, domain=domain, part=part, source=source, text=text, ip=ip)


def urls_in_text(text: str) -> list[str]:
    """The URLs in plain text, in order, without the punctuation that usually follows a URL."""
    return [m.group(0).rstrip(_TRAILING_PUNCTUATION) for m in URL_IN_TEXT.finditer(text)]
