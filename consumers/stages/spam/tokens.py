"""The Bayes tokenizer: what of a message the classifier counts, as SpamAssassin, Bogofilter and Rspamd learned it.

`tokenize(message, received)` turns the shared parsed view into a list of distinct strings, in
document order (header first), at most `MAX_TOKENS`:

- **Body**: the decoded text of every text part, HTML rendered (the first `PART_CHARS` of each),
  split into words of letters, digits and ``, @ * ! _ ' " $ . -`` (SpamAssassin's class: keeps
  "$31,000,000" and "www.example.test" whole), case folded. Words shorter than 3 bytes and a short
  stop list of grey words are left out; "..." and "--" inside words split them. A word longer than
  `WORD_BYTES` becomes ``sk:`` and its first 7 characters, or, when it holds CJK-like characters
  (U+0800 and up, no spaces between words), one ``u8:`` token per such character. A word with an
  address in it also gives ``U*local`` and ``D*domain`` (and every parent domain), one that looks
  like a host name ``UD:`` tokens of it and its parents; a word with punctuation also counts
  without it ("free!" → "free").
- **Links**: the host (``url:h:``), the registrable domain (``url:d:``), the /24 of an IP host.
- **Header**: every field but those below, its words prefixed with the lower-case field name
  (``Hx-mailer:…``). Addresses in From, To, Cc, Reply-To, Errors-To, Bcc give ``U*``/``D*`` tokens
  and display-name words; Message-ID, In-Reply-To and References share the prefix ``Hmid:`` and are
  split at punctuation; X-Mailer and User-Agent share ``Hua:``; Content-Type's boundary becomes its
  shape (hex digits as "H"); DKIM signatures, X-Face and key fingerprints count by presence only.
  Subject words lose the site's own subject tags first.
- **Hops**: the client as the ingress saw it (HELO, reverse name, /24 of the address: our own
  Received field, or `received.client` when the message has none) and the two earliest Received
  fields (where the message started: spamware HELOs), dates and queue ids removed.
- **MIME**: the types of the parts, transfer encodings and charsets of text parts, attachment
  extensions and the first 16 hex digits of each attachment's SHA-256 (a campaign's picture).

Left out, because they mislead a learner or are ours: Date, list headers (a list that discusses
spam would turn spam words into ham signs), Received fields between the client and the origin,
Authentication-Results and ARC (the auth signals are rules of their own), every ``X-Spam-*`` field
and the site's spam header names, headers added at delivery (Return-Path, Delivered-To,
X-Original-To) and mailbox annotations (Status, X-UID, X-Keywords, ...). When the message carries
our ingress's Received field (``by <host> (poststelle)``), every field above the topmost one is left
out too: the sinks put theirs on top (`pipeline.mail.render`), and so do Dovecot and later hops. So
a message scanned at the gateway and the same message read back from a mailbox give the same
tokens, and `token_digest` makes them the same message; what still tells them apart is a held
attachment (the delivered copy has a notice in its place).

`token_hashes` maps tokens to distinct sorted unsigned 64-bit integers (BLAKE2b): the model never
holds a string. `TOKENIZER_VERSION` changes whenever the tokens of some message change; the model
counts only learn events of its own version (relearn after an upgrade).
"""
from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from pipeline.mail.headers import HeaderField
from pipeline.mail.message import ParsedMessage
from schemas.events import Received

__all__ = ["TOKENIZER_VERSION", "MAX_TOKENS", "TokenizerOptions", "tokenize", "token_hashes", "token_digest",
           "pack_tokens", "unpack_tokens", "TokensInvalid"]

TOKENIZER_VERSION = 1
MAX_TOKENS = 3000  # distinct tokens of one message (the header's first; at most MAX_HEADER_TOKENS of them)
MAX_HEADER_TOKENS = 1000
PART_CHARS = 50_000  # of each text part's text (SpamAssassin's body_part_scan_size)
WORD_BYTES = 15  # longer words (in UTF-8) are summarised (SpamAssassin's MAX_TOKEN_LENGTH)
ORIGIN_HOPS = 2  # earliest Received fields tokenized (SpamAssassin: the last two)

_WORD = re.compile(r"""[\w,@*!'"$.\-]+""")
_SPLIT_RUN = re.compile(r"(?<=\w)(\.{3,6}|-{2,6})(?=\w)")
_TRIM = "-'\".,"
_ADDRESS_IN_WORD = re.compile(r"\S@\S")
_HOST_IN_WORD = re.compile(r"\S\.[a-z]")
_PUNCTUATION = re.compile(r"[^\w:*]")
_WIDE = re.compile(r"[\u0800-\U0010ffff]")
_ADDRESS = re.compile(r"[\w.+=!#$%&'*/?^`{|}~-]+@[\w.-]+")
# words that come out grey in every corpus (SpamAssassin's stop list)
_STOP = frozenset("""able all already and any are because both can come each email even few first for from give has
have http information into it's just know like long look made mail mailing mailto make many more most much need
not now number off one only own out people place right same see such that the this through time using web where
why with without work world year years you you're your""".split())

# fields left out (lower case; a name ending in "*" is a prefix)
_IGNORED = ("date", "delivery-date", "delivered-to", "x-original-to", "envelope-to", "x-envelope-to", "return-path",
            "sender", "x-sender", "received", "authentication-results", "arc-*", "received-spf", "x-spam*",
            "x-mailscanner*", "x-virus*", "x-antispam*", "x-bogosity", "x-perlmx-spam", "x-imt-spam*",
            "list-*", "x-list*", "mailing-list", "x-mailing-list", "x-mailman-*", "x-beenthere", "x-loop",
            "mail-followup-to", "x-unsubscribe", "resent-*", "x-resent-*", "original-*", "x-original-*",
            "status", "x-status", "x-keywords", "x-uid", "x-uidl", "x-imapbase", "x-imap", "x-flags", "content-length",
            "lines", "replied", "forwarded", "xref", "x-gnus-*", "x-vm-*", "x-mozilla-*", "x-evolution*",
            "content-class", "thread-index", "thread-topic")
_PRESENCE_ONLY = ("dkim-signature", "domainkey-signature", "x-google-dkim-signature", "x-face", "face",
                  "x-pgp*", "x-gpg*", "autocrypt")
_ADDRESS_FIELDS = frozenset({"from", "to", "cc", "bcc", "reply-to", "errors-to"})
_MESSAGE_ID_FIELDS = frozenset({"message-id", "in-reply-to", "references"})
_AGENT_FIELDS = frozenset({"x-mailer", "user-agent"})

_OUR_HOP = re.compile(r"\bby\s+\S+\s+\(poststelle\)", re.I)
_HOP_FROM = re.compile(r"^\s*from\s+(.*?)\s+\((\S*)\s+\[([^\]]*)\]\)", re.I)
_IPV4 = re.compile(r"\b(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\b")
_HOP_ID = re.compile(r"\bid\s+[\w.-]{5,}\b|\bwith\s+e?smtpsa?\s+id\s+\S+", re.I)
_HOP_DATE = re.compile(r"(?:;|\b(?:mon|tue|wed|thu|fri|sat|sun),)\s*[^;]*\d{4}\s+\d\d:\d\d(?::\d\d)?[^;]*$", re.I)
_HOP_NOISE = re.compile(r"\b(?:with|from|for|by|smtp|esmtp|esmtps|esmtpa|esmtpsa|lmtp|utf8smtp)\b", re.I)
_BOUNDARY = re.compile(r"""boundary\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s;]+))""", re.I)
_HEX = re.compile(r"[0-9a-f]", re.I)
_GREY_CONTENT_TYPE = re.compile(r"\b(?:text|charset)\b", re.I)


@dataclass(frozen=True, slots=True)
class TokenizerOptions:
    """What of a message is the site's own, besides the fields always left out.

    `own_headers`: the spam stage's header names (lower case; `X-Spam-*` is always left out), so a
    site writing X-IMT-Spam-Score still learns from delivered copies; `subject_tags`: the tags the
    stage puts before a subject ("{SPAM?}"), removed before the subject is split.
    """

    own_headers: frozenset[str] = frozenset()
    subject_tags: tuple[str, ...] = ("{SPAM?}", "{SPAM!}")

    @classmethod
    def for_site(cls, header_names: Iterable[str] = (), subject_tags: Iterable[str] = ("{SPAM?}", "{SPAM!}"),
                 ignore_headers: Iterable[str] = ()) -> "TokenizerOptions":
        own = frozenset(name.strip().lower() for name in (*header_names, *ignore_headers) if name.strip())
        return cls(own_headers=own, subject_tags=tuple(t for t in subject_tags if t))


DEFAULT_OPTIONS = TokenizerOptions()


class _Names:
    """Field names (lower case) to match: exact ones, and prefixes written with a final "*"."""

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self.exact = frozenset(p for p in patterns if not p.endswith("*"))
        self.prefixes = tuple(p[:-1] for p in patterns if p.endswith("*"))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self.exact or name.startswith(self.prefixes))


_IGNORED_NAMES, _PRESENCE_ONLY_NAMES = _Names(_IGNORED), _Names(_PRESENCE_ONLY)


# ---- words -------------------------------------------------------------------------------------


def _parents(domain: str) -> Iterator[str]:
    """example.co.uk → example.co.uk, co.uk, uk (SpamAssassin splits address domains so)."""
    labels = domain.strip(".").split(".")
    for i in range(len(labels)):
        if labels[i]:
            yield ".".join(labels[i:])


def _address_tokens(address: str) -> Iterator[str]:
    local, _, domain = address.rpartition("@")
    if not local or not domain:
        return
    yield "U*" + local
    for parent in _parents(domain):
        yield "D*" + parent


def _word_tokens(word: str, prefix: str, body: bool) -> Iterator[str]:
    """The tokens of one word (lower case, trimmed), as SpamAssassin's _tokenize_line makes them."""
    size = len(word) if word.isascii() else len(word.encode("utf-8", "surrogatepass"))
    if size < 3 or word in _STOP:
        return
    if body:
        if _ADDRESS_IN_WORD.search(word):
            yield from (prefix + t for t in _address_tokens(word))
        elif _HOST_IN_WORD.search(word):
            yield prefix + "UD:" + word
            for parent in list(_parents(word))[1:]:
                yield prefix + "UD:" + parent
    if size > WORD_BYTES and "*" not in word:
        wide = _WIDE.findall(word)
        if wide:
            yield from (prefix + "u8:" + c for c in dict.fromkeys(wide))
            return
        word = "sk:" + word[:7]
    elif body and _PUNCTUATION.search(word):
        bare = _PUNCTUATION.sub("", word)
        if bare:
            yield prefix + bare
    yield prefix + word


def _words(text: str, prefix: str = "", body: bool = False) -> Iterator[str]:
    for run in dict.fromkeys(_WORD.findall(text.lower())):
        for word in _SPLIT_RUN.split(run) if ("..." in run or "--" in run) else (run,):
            word = word.strip(_TRIM)
            if word:
                yield from _word_tokens(word, prefix, body)


# ---- header ------------------------------------------------------------------------------------


def _strip_tags(subject: str, tags: tuple[str, ...]) -> str:
    text = subject.lstrip()
    changed = True
    while changed:
        changed = False
        for tag in tags:
            if text.startswith(tag):
                text, changed = text[len(tag):].lstrip(), True
    return text


def _content_type(value: str) -> str:
    """The value without its boundary, plus the boundary's shape (SpamAssassin's pre-chewing)."""
    value = _GREY_CONTENT_TYPE.sub(" ", value)
    found = _BOUNDARY.search(value)
    if not found:
        return value
    boundary = next(g for g in found.groups() if g is not None)
    shape = re.sub(r"([-_.=]+)", r" \1 ", _HEX.sub("H", boundary))
    return f"{value[:found.start()]} {value[found.end():]} boundary:{shape}"


def _field_tokens(key: str, value: str) -> Iterator[str]:
    if key in _ADDRESS_FIELDS:
        prefix = f"H{key}:"
        for address in _ADDRESS.findall(value.lower()):
            yield from (prefix + t for t in _address_tokens(address))
        yield from _words(_ADDRESS.sub(" ", value), prefix)
    elif key in _MESSAGE_ID_FIELDS:
        yield from _words(re.sub(r"[^\w]", " ", value), "Hmid:")
    elif key in _AGENT_FIELDS:
        yield from _words(value, "Hua:")
    elif key == "content-type":
        yield from _words(_content_type(value), "Hcontent-type:")
    elif key == "mime-version":
        yield from _words(value.replace("1.0", ""), "Hmime-version:")
    else:
        yield from _words(value, f"H{key}:")


def _sender_fields(message: ParsedMessage) -> tuple[tuple[HeaderField, ...], HeaderField | None]:
    """The fields the message had when our ingress took it (those below our topmost Received field:
    whatever is above it was added on the way out or at delivery), and that Received field."""
    fields = message.header.fields
    for index, item in enumerate(fields):
        if item.key == "received" and _OUR_HOP.search(item.value):
            return fields[index + 1:], item
    return fields, None


def _header_tokens(fields: tuple[HeaderField, ...], options: TokenizerOptions) -> Iterator[str]:
    for item in fields:
        key = item.key
        if key == "subject":
            yield from _words(_strip_tags(item.value, options.subject_tags), "Hsubject:", body=True)
        elif key in options.own_headers or key in _IGNORED_NAMES:
            continue
        elif key in _PRESENCE_ONLY_NAMES:
            yield f"H{key}:present"
        else:
            yield from _field_tokens(key, item.value)


# ---- hops ---------------------------------------------------------------------------------------


def _client_tokens(helo: str, reverse_name: str, ip: str) -> Iterator[str]:
    """The client hop: the same tokens from our Received field or from the received event."""
    helo, reverse_name = helo.lower().strip("[]"), reverse_name.lower()
    yield from (f"hop:helo:{p}" for p in list(_parents(helo))[:3])
    if not reverse_name or reverse_name == "unknown":
        yield "hop:rdns:none"
    else:
        yield from (f"hop:rdns:{p}" for p in list(_parents(reverse_name))[:3])
        if reverse_name == helo:
            yield "hop:helo=rdns"
    v4 = _IPV4.fullmatch(ip)
    if v4:
        yield "hop:ip:" + ".".join(v4.groups()[:3])
    elif ":" in ip:
        yield "hop:ip6:" + ":".join(ip.lower().split(":")[:3])
    if _IPV4.fullmatch(helo) or ":" in helo:
        yield "hop:helo-literal"


def _clean_helo(value: str) -> str:
    """As `pipeline.mail.trace.received_header` writes the HELO into our Received field."""
    return "".join(c for c in value if c.isprintable() and c not in "()\\")[:255] or "unknown"


def _hop_words(value: str) -> Iterator[str]:
    """An origin hop without its queue id and date, addresses cut to /24 (SpamAssassin's pre-chewing)."""
    text = _HOP_DATE.sub(" ", _HOP_ID.sub(" ", value))
    text = _IPV4.sub(lambda m: f"{m[1]}.{m[2]}.{m[3]} ip*{m[0]}", text)
    yield from _words(_HOP_NOISE.sub(" ", text), "Hreceived:")


def _hop_tokens(fields: tuple[HeaderField, ...], ours: HeaderField | None, received: Received | None) -> Iterator[str]:
    if ours is not None:
        parsed = _HOP_FROM.match(ours.value)
        if parsed:
            yield from _client_tokens(parsed[1], parsed[2], parsed[3])
    elif received is not None:
        client = received.client
        yield from _client_tokens(_clean_helo(client.helo), client.reverse_name or "unknown", client.ip)
    hops = [f for f in fields if f.key == "received" and not _OUR_HOP.search(f.value)]
    for hop in hops[-ORIGIN_HOPS:]:
        yield from _hop_words(hop.value)


# ---- body, links, parts ------------------------------------------------------------------------


def _body_tokens(message: ParsedMessage) -> Iterator[str]:
    for part in message.texts:
        yield from _words(part.text[:PART_CHARS], body=True)


def _link_tokens(message: ParsedMessage) -> Iterator[str]:
    for link in message.links:
        if link.ip:
            v4 = _IPV4.fullmatch(link.host)
            yield "url:ip:" + (".".join(v4.groups()[:3]) if v4 else link.host)
        elif link.host:
            yield "url:h:" + link.host
            if link.domain:
                yield "url:d:" + link.domain


def _mime_tokens(message: ParsedMessage) -> Iterator[str]:
    leaves = message.leaves
    yield f"mime:leaves:{min(len(leaves), 5)}"
    for part in leaves:
        yield "mime:" + part.content_type
    for text in message.texts:
        yield "mime:cte:" + (text.transfer_encoding or "7bit").lower()
        yield "mime:cs:" + (text.charset or "none").lower()
    for attachment in message.attachments:
        extension = attachment.filename.rpartition(".")[2].lower() if "." in attachment.filename else ""
        yield "mime:ext:" + (extension[:10] or "none")
        yield "mime:sha:" + attachment.sha256[:16]


# ---- the message ---------------------------------------------------------------------------------


def _take(found: dict[str, None], tokens: Iterable[str], limit: int) -> None:
    for token in tokens:
        if len(found) >= limit:
            return
        found.setdefault(token)


def tokenize(message: ParsedMessage, received: Received | None = None,
             options: TokenizerOptions = DEFAULT_OPTIONS) -> list[str]:
    """The distinct tokens of a message (see the module docstring), header first, at most MAX_TOKENS.

    `message` must be parsed with its content. `received` gives the client hop when the message
    does not carry our ingress's Received field (a file given to `poststelle spam check`).
    """
    fields, ours = _sender_fields(message)
    found: dict[str, None] = {}
    _take(found, _header_tokens(fields, options), MAX_HEADER_TOKENS)
    _take(found, _hop_tokens(fields, ours, received), MAX_HEADER_TOKENS + 50)
    _take(found, _mime_tokens(message), MAX_TOKENS)
    _take(found, _link_tokens(message), MAX_TOKENS)
    _take(found, _body_tokens(message), MAX_TOKENS)
    return list(found)


# ---- hashes ------------------------------------------------------------------------------------


class TokensInvalid(ValueError):
    """Packed token hashes that are not what `pack_tokens` writes."""


def token_hashes(tokens: Iterable[str]) -> np.ndarray:
    """The tokens' 64-bit BLAKE2b hashes, distinct and sorted (0 is never a hash: it marks an empty slot)."""
    digests = b"".join(hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=8).digest() for t in tokens)
    hashes = np.frombuffer(digests, dtype="<u8").astype(np.uint64)
    hashes[hashes == 0] = 1
    return np.unique(hashes)


def token_digest(hashes: np.ndarray) -> str:
    """What makes "the same message": SHA-256 of the tokenizer version and the sorted token hashes."""
    prefix = f"poststelle-bayes/{TOKENIZER_VERSION}:".encode()
    return hashlib.sha256(prefix + np.ascontiguousarray(hashes, dtype="<u8").tobytes()).hexdigest()


def pack_tokens(hashes: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(hashes, dtype="<u8").tobytes()).decode("ascii")


def unpack_tokens(text: str, limit: int = MAX_TOKENS) -> np.ndarray:
    """The hashes of `pack_tokens`; raises `TokensInvalid` unless they are distinct, sorted, non-zero, few enough."""
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise TokensInvalid(f"tokens are not base64: {exc}") from None
    if len(raw) % 8:
        raise TokensInvalid(f"{len(raw)} bytes of tokens: not a multiple of 8")
    hashes = np.frombuffer(raw, dtype="<u8").astype(np.uint64)
    if len(hashes) > limit:
        raise TokensInvalid(f"{len(hashes)} tokens: more than {limit}")
    if len(hashes) and (hashes[0] == 0 or np.any(hashes[1:] <= hashes[:-1])):
        raise TokensInvalid("token hashes are not distinct, sorted and non-zero")
    return hashes
