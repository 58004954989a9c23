"""Built-in tests: the heuristics a regex cannot say, written in Python, named in rule files.

A rule file uses one as `eval NAME builtin(arguments)`; the arguments are checked against the
function's parameters when the file is read. Each test takes the `Scan` of the message (the
`ScanContext` and the views derived from it once) and answers True or False. They are generic
mail-operator heuristics, the kind SpamAssassin and Rspamd have carried for years (HTML without
text, link text naming another domain than the target, a Date from the future, words spelt with
digits), never phrases mined from a corpus. Each looks at bounded text (the scan caps of
`consumers.stages.spam.scan`, or less), with RE2 where a pattern scans text, so its time is linear
in the message whatever the message. The signals of the earlier checks are in `signals.py`.
"""
from __future__ import annotations

import datetime as dt
import email.utils
from collections.abc import Callable

import re2

from consumers.stages.spam.scan import Scan
from pipeline.mail.charsets import text_codec
from pipeline.mail.domains import InvalidName, normalize_domain, registrable_domain
from schemas.events import epoch_from_iso

__all__ = ["BUILTINS", "builtin", "CAPS_SAMPLE_CHARS"]

BUILTINS: dict[str, Callable[..., bool]] = {}
CAPS_SAMPLE_CHARS = 10_000  # of the body text counted for capitals
ALTERNATIVE_SAMPLE_CHARS = 5_000  # of each version of a multipart/alternative compared
WORDS_SAMPLE_CHARS = 100_000  # of the body text looked at for obfuscated words
MAX_CANDIDATES = 500  # words looked at by the obfuscation tests
DATE_CHARS = 256  # of a Date value parsed
RECEIVED_FIELDS = 3  # the topmost Received fields looked at for the time of receipt
_UPPER = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_LOWER = b"abcdefghijklmnopqrstuvwxyz"
_OPTIONS = re2.Options()
_OPTIONS.log_errors = False
# letters with digits or $ standing in for letters: v1agra, c1alis, ca$h (not user@host, not x86)
_LEET_WORD = re2.compile(r"\b[A-Za-z]{1,14}(?:[013457$][A-Za-z]{1,14}){1,2}\b", _OPTIONS)
# single letters split by one repeated separator: c.a.s.i.n.o, V-I-A-G-R-A
_SPLIT_WORD = re2.compile(r"\b(?:[A-Za-z][.\-_*~+]){4,}[A-Za-z]\b", _OPTIONS)
_VOWEL = re2.compile(r"[aeiouy]", _OPTIONS)
_DOMAIN_TEXT = re2.compile(r"(?i)^(?:(?:https?|ftp)://)?(?:[^/@\s]+@)?((?:[a-z0-9-]+\.)+[a-z]{2,63})\.?(?:[:/?#].*)?$",
                           _OPTIONS)
_ADDRESS = re2.compile(r"[^\s<>\"'@]+@((?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,63})", _OPTIONS)
_IMG_TAG = re2.compile(r"(?i)<img\b", _OPTIONS)
_HTML_TAG = re2.compile(r"(?i)<html\b", _OPTIONS)
_ENCODED_B_WORD = re2.compile(r"=\?[^?\s]+\?[bB]\?", _OPTIONS)
_MESSAGE_ID = re2.compile(r"^<[^<>@\s]+@[^<>@\s]+>$", _OPTIONS)


def builtin(name: str) -> Callable[[Callable[..., bool]], Callable[..., bool]]:
    """Register a test under `name` (once) for `eval NAME name(...)` in rule files."""

    def register(function: Callable[..., bool]) -> Callable[..., bool]:
        if name in BUILTINS:
            raise ValueError(f"built-in test {name!r} is registered twice")
        BUILTINS[name] = function
        return function

    return register


# ---- helpers -----------------------------------------------------------------------------------


def _visible_chars(text: str) -> int:
    return len(text) - text.count(" ") - text.count("\n")


def _capitals(text: str) -> tuple[int, int]:
    """(capitals, letters) among the ASCII letters of `text` (counted in C)."""
    data = text.encode("ascii", "ignore")
    upper = len(data) - len(data.translate(None, _UPPER))
    lower = len(data) - len(data.translate(None, _LOWER))
    return upper, upper + lower


def _domain_of(name: str) -> str:
    try:
        return registrable_domain(normalize_domain(name)) or ""
    except InvalidName:
        return ""


def _words(text: str) -> set[str]:
    """The distinct words of the start of a text, lower case (str.split, in C)."""
    return set(text[:ALTERNATIVE_SAMPLE_CHARS].lower().split())


def _candidates(pattern, text: str):
    """The matches of `pattern` in `text`, at most MAX_CANDIDATES of them (each costs Python time)."""
    for count, match in enumerate(pattern.finditer(text)):
        if count >= MAX_CANDIDATES:
            return
        yield match.group(0)


def _html_parts(scan: Scan):
    return [part for part in scan.texts if part.is_html]


# ---- HTML and links --------------------------------------------------------------------------


@builtin("html_only")
def html_only(scan: Scan) -> bool:
    """The text is HTML with no plain-text alternative (senders of real mail usually send both)."""
    return bool(scan.texts) and all(part.is_html for part in scan.texts)


@builtin("html_little_text")
def html_little_text(scan: Scan, max_chars: int) -> bool:
    """HTML only, showing fewer than `max_chars` characters: an image or a link with little else."""
    return html_only(scan) and _visible_chars(scan.body_text) < max_chars


@builtin("html_images_little_text")
def html_images_little_text(scan: Scan, max_chars: int) -> bool:
    """HTML with images and fewer than `max_chars` characters of text: the message is the picture."""
    if _visible_chars(scan.body_text) >= max_chars:
        return False
    return any(_IMG_TAG.search(part.markup) for part in _html_parts(scan))


@builtin("html_without_html_tag")
def html_without_html_tag(scan: Scan) -> bool:
    """A text/html part without an <html> tag: HTML made by a program, not a mail client."""
    return any(_HTML_TAG.search(part.markup) is None for part in _html_parts(scan))


@builtin("link_text_mismatch")
def link_text_mismatch(scan: Scan) -> bool:
    """An HTML link whose text is itself an address (www.bank.example) of another registrable
    domain than where the link goes: the classic phishing disguise."""
    for link in scan.message.links:
        if link.source != "href" or not link.text or not (link.domain or link.ip):
            continue
        shown = _DOMAIN_TEXT.search(link.text.strip())
        if shown is None:
            continue
        domain = _domain_of(shown.group(1))
        if domain and domain != link.domain:
            return True
    return False


@builtin("link_to_ip")
def link_to_ip(scan: Scan) -> bool:
    """A link to a bare IP address in any form a browser reads (1.2.3.4, 0x7f.1, 2130706433)."""
    return any(link.ip for link in scan.message.links)


@builtin("alternative_parts_differ")
def alternative_parts_differ(scan: Scan, min_overlap: float) -> bool:
    """A multipart/alternative whose plain and HTML versions share less than `min_overlap` of their
    words: the two versions are meant to say the same thing."""
    alternatives = {p.path for p in scan.message.parts if p.content_type == "multipart/alternative"}
    for parent in alternatives:
        children = [t for t in scan.texts if t.path.rpartition(".")[0] == parent]
        plain = [t for t in children if t.content_type == "text/plain"]
        html = [t for t in children if t.is_html]
        if not plain or not html:
            continue
        words = [_words(t.text) for t in (plain[0], html[0])]
        union = words[0] | words[1]
        if len(union) >= 10 and len(words[0] & words[1]) / len(union) < min_overlap:
            return True
    return False


# ---- header fields -----------------------------------------------------------------------------


def _when(value: str) -> float | None:
    """Seconds since the epoch of an RFC 5322 date (no zone or -0000: UTC); None when unreadable."""
    try:
        moment = email.utils.parsedate_to_datetime(value[:DATE_CHARS])
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    try:
        return moment.timestamp()
    except (OverflowError, ValueError, OSError):
        return None


def _date(scan: Scan) -> tuple[bool, float | None]:
    """(present, seconds since the epoch or None when unreadable)."""
    value = scan.message.header.first("Date")
    return (True, _when(value)) if value else (False, None)


def _received_at(scan: Scan) -> float:
    """When the message was received: the date of the topmost Received field that has one (ours,
    in the pipeline; the receiving server's, for a stored message checked later), else the time of
    the `received` event. Never the clock, so a message scores the same whenever it is scored."""
    for field in scan.message.header.all("Received")[:RECEIVED_FIELDS]:
        when = _when(field.value.rpartition(";")[2])
        if when is not None:
            return when
    return epoch_from_iso(scan.received.time)


@builtin("date_invalid")
def date_invalid(scan: Scan) -> bool:
    """A Date field that RFC 5322 readers cannot read."""
    present, when = _date(scan)
    return present and when is None


@builtin("date_future")
def date_future(scan: Scan, hours: float) -> bool:
    """The Date is more than `hours` after the gateway received the message."""
    _, when = _date(scan)
    return when is not None and when - _received_at(scan) > hours * 3600


@builtin("date_past")
def date_past(scan: Scan, days: float) -> bool:
    """The Date is more than `days` before the gateway received the message."""
    _, when = _date(scan)
    return when is not None and _received_at(scan) - when > days * 86400


@builtin("message_id_malformed")
def message_id_malformed(scan: Scan) -> bool:
    """A Message-ID that is not <left@right> (missing is a rule of its own: `exists:`)."""
    fields = scan.message.header.all("Message-ID")
    return bool(fields) and not _MESSAGE_ID.search(fields[0].value.strip())


@builtin("bulk_without_unsubscribe")
def bulk_without_unsubscribe(scan: Scan) -> bool:
    """Precedence: bulk, list or junk, but no List-Unsubscribe and no List-Id: bulk mail that does
    not let the reader leave."""
    header = scan.message.header
    precedence = header.first("Precedence").strip().lower()
    return precedence in ("bulk", "list", "junk") and not header.all("List-Unsubscribe") and not header.all("List-Id")


@builtin("needless_encoding")
def needless_encoding(scan: Scan, field: str) -> bool:
    """A field written as base64 encoded words although it is plain ASCII: hiding words from
    filters (SpamAssassin's *_EXCESS_BASE64)."""
    return any(_ENCODED_B_WORD.search(f.raw[:2048].decode("latin-1")) and f.value.isascii()
               for f in scan.message.header.all(field))


@builtin("from_name_has_address")
def from_name_has_address(scan: Scan) -> bool:
    """The From display name carries an address of another domain than the From address:
    "support@bank.example" <x@elsewhere.example>, so a client shows the wrong sender."""
    for mailbox in scan.message.authors.mailboxes:
        shown = _ADDRESS.search(mailbox.display_name)
        if shown and _domain_of(shown.group(1)) != _domain_of(mailbox.domain):
            return True
    return False


@builtin("undisclosed_recipients")
def undisclosed_recipients(scan: Scan) -> bool:
    """No To or Cc address at all: the fields are missing, empty or an empty group
    ("undisclosed-recipients:;")."""
    return not any(address for address in scan.header("ToCc", "addr").split("\n") if "@" in address)


@builtin("recipients_sorted")
def recipients_sorted(scan: Scan, min_count: int) -> bool:
    """At least `min_count` To/Cc addresses in alphabetical order: a list harvested and sorted."""
    addresses = [a.lower() for a in scan.header("ToCc", "addr").split("\n") if "@" in a]
    return len(addresses) >= min_count and len(set(addresses)) == len(addresses) and addresses == sorted(addresses)


@builtin("no_author_domain")
def no_author_domain(scan: Scan) -> bool:
    """No single From domain (no From, several From fields or domains, an unreadable From): DMARC
    has nothing to check, which is how a forged From slips past it."""
    return not scan.message.authors.domain


@builtin("from_is_recipient")
def from_is_recipient(scan: Scan) -> bool:
    """The From address is an envelope recipient, from a session that did not log in: mail
    "from yourself" that your own server did not send (extortion and phishing spam)."""
    if scan.received.client.authenticated_as:
        return False
    recipients = {r.lower() for r in scan.received.envelope.rcpt_to}
    return any(m.address.lower() in recipients for m in scan.message.authors.mailboxes)


@builtin("header_malformed")
def header_malformed(scan: Scan) -> bool:
    """The header section has lines that are neither fields nor continuations (a leading mbox
    "From " line, as stored messages have, does not count)."""
    defects = scan.message.header.defects
    if scan.message.raw.startswith(b"From "):
        defects = tuple(d for d in defects if d != "malformed_line@0")
    return bool(defects)


# ---- text ----------------------------------------------------------------------------------------


@builtin("base64_ascii_text")
def base64_ascii_text(scan: Scan) -> bool:
    """A text part sent as base64 although it is plain ASCII: needless, and it hides the words from
    simple filters on the way."""
    return any(part.transfer_encoding == "base64" and part.text.isascii() and _visible_chars(part.text) > 20
               for part in scan.texts)


@builtin("charset_unknown")
def charset_unknown(scan: Scan) -> bool:
    """A text part declares a charset no decoder knows (it was read as UTF-8)."""
    return any(part.charset and text_codec(part.charset) is None for part in scan.texts)


@builtin("subject_caps")
def subject_caps(scan: Scan, min_letters: int, ratio: float) -> bool:
    """At least `min_letters` letters in the Subject, and at least `ratio` of them capitals."""
    upper, letters = _capitals(scan.message.header.subject[:1000])
    return letters >= min_letters and upper >= ratio * letters


@builtin("body_caps")
def body_caps(scan: Scan, min_letters: int, ratio: float) -> bool:
    """At least `min_letters` letters in the text, and at least `ratio` of them capitals."""
    upper, letters = scan.memo("body_capitals", lambda: _capitals(scan.body_text[:CAPS_SAMPLE_CHARS]))
    return letters >= min_letters and upper >= ratio * letters


def _deleet(word: str) -> str:
    return word.translate(_LEET)


_LEET = str.maketrans("013457$", "oleasts")


def _looks_obfuscated(word: str) -> bool:
    """A word (5 to 15 characters, one case or capitalised, a vowel) once its digits are letters:
    v1agra is, a random identifier (Kh1XhaeR, PGP and base64 text) is not."""
    if not 5 <= len(word) <= 15:
        return False
    plain = _deleet(word)
    replaced = sum(1 for a, b in zip(word, plain) if a != b)
    letters = plain[1:]
    one_case = letters.islower() or letters.isupper()
    return plain.isalpha() and one_case and replaced * 3 <= len(word) and bool(_VOWEL.search(plain.lower()))


@builtin("obfuscated_words")
def obfuscated_words(scan: Scan, min_count: int) -> bool:
    """At least `min_count` distinct words spelt with digits or $ for letters (v1agra, ca$h)."""
    text = f"{scan.message.header.subject}\n{scan.body_text[:WORDS_SAMPLE_CHARS]}"
    found: set[str] = set()
    for word in _candidates(_LEET_WORD, text):
        if _looks_obfuscated(word):
            found.add(word.lower())
            if len(found) >= min_count:
                return True
    return False


@builtin("split_words")
def split_words(scan: Scan, min_count: int) -> bool:
    """At least `min_count` words split into single letters (c.a.s.i.n.o, V-I-A-G-R-A)."""
    text = f"{scan.message.header.subject}\n{scan.body_text[:WORDS_SAMPLE_CHARS]}"
    found = set()
    for word in _candidates(_SPLIT_WORD, text):
        separators = {c for c in word if not c.isalpha()}
        if len(separators) == 1:
            found.add(word.lower())
            if len(found) >= min_count:
                return True
    return False


@builtin("body_empty")
def body_empty(scan: Scan) -> bool:
    """No text and no attachment: nothing a reader could want."""
    return not scan.body_text.strip() and not scan.message.attachments


@builtin("images_little_text")
def images_little_text(scan: Scan, max_chars: int) -> bool:
    """Image attachments and fewer than `max_chars` characters of text: image spam."""
    has_image = any(a.content_type.startswith("image/") for a in scan.message.attachments)
    return has_image and _visible_chars(scan.body_text) < max_chars
