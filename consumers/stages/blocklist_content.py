"""What the blocklist stage looks up, taken from a message: link hosts, From domains, attachment digests.

Links: every text/plain and text/html part is decoded (Content-Transfer-Encoding, then its
charset; an unknown charset is read as UTF-8 with replacement). In HTML, the absolute URLs of
`href`, `src` and `action` attributes and the text between tags are searched, after entity
decoding; in plain text, bare URLs
(`http://`, `https://`, `ftp://`) and `www.` names. A host is normalised (lower case, IDNA A-labels,
no port, user info or final dot); IP literals and names without a dot are left out. URIBLs list
*registrable* domains (`www.bad-link.test` is looked up as `bad-link.test`), found with the Public
Suffix List (`PublicSuffixList`; a name under no rule has a one-label suffix, the list's default rule "*").

Bounds, so a hostile message costs bounded time: at most `max_domains` distinct hosts (the rest
are dropped, `truncated` says so), `max_parts` MIME parts walked, `max_text_bytes` of decoded text
searched.

Attachments: every leaf part that is not an inline text body (a filename, `Content-Disposition:
attachment`, or a type other than text/*) is decoded and its SHA-256 taken; parts inside attached
`message/rfc822` messages count too.
"""
from __future__ import annotations

import email
import email.policy
import email.utils
import hashlib
import html
import ipaddress
import logging
import re
from dataclasses import dataclass, field
from email.message import Message
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from pipeline.state.sitelists import EntryError, normalize_domain

__all__ = [
    "MessageFacts",
    "PublicSuffixList",
    "DEFAULT_PSL_PATH",
    "extract_facts",
    "hosts_in_text",
    "hosts_in_html",
    "host_of_url",
    "load_public_suffix_list",
]

log = logging.getLogger(__name__)

DEFAULT_PSL_PATH = "/usr/share/publicsuffix/public_suffix_list.dat"  # Debian's publicsuffix package
_URL = re.compile(r"""(?i)\b(?:(?:https?|ftp)://|www\.)[^\s<>"'`{}|\\^\[\]]+""")
_URL_ATTRIBUTE = re.compile(r"""(?i)\b(?:href|src|action)\s*=\s*["']?\s*((?:(?:https?:|ftp:)?//|www\.)[^"'\s>]+)""")
_TAG = re.compile(r"<[^>]*>")


# ---- hosts ----------------------------------------------------------------------------------------


def host_of_url(url: str) -> str:
    """The normalised host name of a URL (or a bare "www.name/..."); "" when it has none worth a lookup."""
    text = url.strip().strip(".,;:!?)>'\"")
    if text.lower().startswith("www."):
        text = "http://" + text
    try:
        host = urlsplit(text).hostname or ""
    except ValueError:  # a bad port or IPv6 literal
        return ""
    host = host.strip(".")
    if not host or "." not in host:
        return ""
    try:
        ipaddress.ip_address(host)
        return ""  # an IP literal: no domain to look up
    except ValueError:
        pass
    try:
        return normalize_domain(host)
    except EntryError:
        return ""


def hosts_in_text(text: str) -> list[str]:
    """Hosts of the bare URLs in plain text, in order of appearance (with repeats)."""
    return [h for h in (host_of_url(m.group(0)) for m in _URL.finditer(text)) if h]


def hosts_in_html(markup: str) -> list[str]:
    """Hosts of link attributes (href, src, action) and of bare URLs in an HTML part.

    Regular expressions over the entity-decoded markup rather than a parser: a hostile part cannot
    make it fail, and it finds links in broken markup a browser would still show."""
    text = html.unescape(markup)
    attributes = [m.group(1) for m in _URL_ATTRIBUTE.finditer(text)]
    hosts = [h for h in (host_of_url(u) for u in attributes) if h]
    return hosts + hosts_in_text(_TAG.sub(" ", text))


# ---- registrable domains --------------------------------------------------------------------------


class PublicSuffixList:
    """The rules of publicsuffix.org (normal, wildcard "*.x", exception "!y.x"), in A-labels."""

    def __init__(self, rules: list[str]) -> None:
        self.normal: set[str] = set()
        self.wildcard: set[str] = set()  # "*.ck" stored as "ck"
        self.exception: set[str] = set()  # "!www.ck" stored as "www.ck"
        for rule in rules:
            try:
                if rule.startswith("!"):
                    self.exception.add(normalize_domain(rule[1:]))
                elif rule.startswith("*."):
                    self.wildcard.add(normalize_domain(rule[2:]))
                else:
                    self.normal.add(normalize_domain(rule))
            except EntryError:
                continue

    @classmethod
    def from_text(cls, text: str) -> PublicSuffixList:
        rules = []
        for line in text.splitlines():
            rule = line.strip().split(" ")[0]
            if rule and not rule.startswith("//"):
                rules.append(rule)
        return cls(rules)

    def suffix_length(self, labels: list[str]) -> int:
        """How many trailing labels form the public suffix (at least 1: the default rule "*")."""
        best = 1
        for i in range(len(labels)):
            name = ".".join(labels[i:])
            count = len(labels) - i
            if name in self.exception:
                return count - 1
            if name in self.normal:
                best = max(best, count)
            parent = ".".join(labels[i + 1:])
            if i + 1 < len(labels) and parent in self.wildcard:
                best = max(best, count)
        return best

    def registrable(self, host: str) -> str:
        """The registrable domain of a normalised host ("" when the host is itself a public suffix)."""
        labels = host.split(".")
        length = self.suffix_length(labels) + 1
        return ".".join(labels[-length:]) if len(labels) >= length else ""


@lru_cache(maxsize=4)
def load_public_suffix_list(path: str) -> PublicSuffixList:
    """The list at `path`, read once; an empty list (default rule only) when the file is missing."""
    try:
        return PublicSuffixList.from_text(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        log.warning("public suffix list %s unreadable (%s); taking the last label as the suffix", path, exc)
        return PublicSuffixList([])


# ---- the message ----------------------------------------------------------------------------------


@dataclass(slots=True)
class MessageFacts:
    url_hosts: list[str] = field(default_factory=list)  # distinct, in order, at most max_domains
    url_domains: list[str] = field(default_factory=list)  # registrable domains of url_hosts, distinct
    from_domains: list[str] = field(default_factory=list)  # of the header From addresses
    attachment_sha256: list[str] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)  # which bounds were hit: domains, parts, text
    parts: int = 0


def _decoded_text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "us-ascii"
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:  # a charset Python does not know
        return payload.decode("utf-8", errors="replace")


def _is_attachment(part: Message) -> bool:
    if part.get_content_disposition() == "attachment" or part.get_filename():
        return True
    return part.get_content_maintype() not in ("text", "multipart", "message")


def _from_domains(message: Message) -> list[str]:
    values = []
    for value in message.get_all("From") or []:
        try:
            values.append(str(value))
        except Exception:  # a header the parser could not make sense of
            continue
    domains = []
    for _, address in email.utils.getaddresses(values):
        domain = address.rpartition("@")[2]
        if "@" in address and domain:
            try:
                domains.append(normalize_domain(domain))
            except EntryError:
                continue
    return list(dict.fromkeys(domains))


def _add_hosts(facts: MessageFacts, hosts: list[str], max_domains: int) -> None:
    for host in hosts:
        if host in facts.url_hosts:
            continue
        if len(facts.url_hosts) >= max_domains:
            if "domains" not in facts.truncated:
                facts.truncated.append("domains")
            return
        facts.url_hosts.append(host)


def extract_facts(raw: bytes, *, max_domains: int = 50, max_parts: int = 1000, max_text_bytes: int = 2_000_000,
                  psl: PublicSuffixList | None = None) -> MessageFacts:
    """Link hosts, From domains and attachment digests of a raw message (see the module docstring)."""
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    facts = MessageFacts(from_domains=_from_domains(message))
    text_left = max_text_bytes
    for part in message.walk():
        facts.parts += 1
        if facts.parts > max_parts:
            facts.truncated.append("parts")
            break
        if part.is_multipart():
            continue
        content_type = part.get_content_type()
        if _is_attachment(part):
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                facts.attachment_sha256.append(hashlib.sha256(payload).hexdigest())
            continue
        if content_type not in ("text/plain", "text/html") or text_left <= 0:
            if text_left <= 0 and "text" not in facts.truncated:
                facts.truncated.append("text")
            continue
        text = _decoded_text(part)[:text_left]
        text_left -= len(text)
        hosts = hosts_in_html(text) if content_type == "text/html" else hosts_in_text(text)
        _add_hosts(facts, hosts, max_domains)
    suffixes = psl or PublicSuffixList([])
    domains = (suffixes.registrable(host) or host for host in facts.url_hosts)
    facts.url_domains = list(dict.fromkeys(domains))
    return facts
