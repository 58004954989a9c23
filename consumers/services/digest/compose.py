"""The digest mail: one message per user listing their new quarantine entries, with a link per action.

What the user sees of each entry is what the quarantine recorded (date, sender, subject, score and
reason) — never the held message itself. Every value that came from the held message is treated as
hostile: in the HTML part it is escaped (`html.escape`, so a subject ``<script>`` is text), in both
parts control and bidi characters are replaced and it is cut to a length, so a crafted subject
cannot draw lines or fake links of its own into the list. The HTML has no images, styles from
outside or scripts: a mail client shows it with remote content blocked and loses nothing.

Each link carries a token for one entry and one action (`pipeline.links.make_link_token`, HMAC with
the site's key, expiring with the entry), at ``<web.base_url>/l/<token>``; the portal's page there
asks for a confirmation before it acts (a mail scanner that follows links releases nothing).
Entries only an administrator may release get no release links, but a link to open them in the
portal, where the user may request the release.
"""
from __future__ import annotations

import html
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid

from pipeline.links import make_link_token
from pipeline.state.quarantine import Entry
from schemas.events import epoch_from_iso

__all__ = ["DigestMail", "compose_digest", "entry_links", "digest_subject", "ENTRY_ACTIONS", "SIGN_IN_PATH", "TEXTS"]

ENTRY_ACTIONS = ("release", "release_learn", "allow_sender", "delete")  # the links of an entry, in order
APPROVAL_ACTIONS = ("open", "allow_sender", "delete")  # an entry only an admin may release
SIGN_IN_PATH = "/login"  # the portal's sign-in page
MAX_SHOWN = 200  # characters of a subject or sender shown

TEXTS: dict[str, dict[str, str]] = {
    "de": {
        "subject_one": "Quarantäne: 1 neue Nachricht",
        "subject_many": "Quarantäne: {n} neue Nachrichten",
        "intro": "Für {user} wurden diese Nachrichten zurückgehalten, statt zugestellt zu werden. "
                 "Sie bleiben bis zum angegebenen Datum in der Quarantäne und werden dann gelöscht.",
        "date": "Datum", "sender": "Absender", "subject": "Betreff", "why": "Grund", "score": "Spam-Wert",
        "expires": "Gelöscht ab", "no_subject": "(kein Betreff)", "attachment": "Anhang",
        "release": "Zustellen", "release_learn": "Zustellen und als erwünscht lernen",
        "allow_sender": "Absender immer erlauben", "delete": "Löschen", "open": "Im Portal ansehen",
        "needs_approval": "Diese Nachricht kann nur die Verwaltung freigeben; im Portal können Sie die "
                          "Freigabe anfordern.",
        "confirm": "Jeder Link öffnet eine Seite, auf der Sie die Aktion bestätigen.",
        "portal": "Alle Nachrichten in der Quarantäne und Ihre Einstellungen (auch wie oft diese "
                  "Übersicht kommt) finden Sie im Portal:",
        "footer": "Diese Nachricht wurde automatisch erstellt.",
        "date_format": "%d.%m.%Y %H:%M",
    },
    "en": {
        "subject_one": "Quarantine: 1 new message",
        "subject_many": "Quarantine: {n} new messages",
        "intro": "These messages for {user} were held instead of delivered. They stay in the quarantine "
                 "until the date shown and are deleted then.",
        "date": "Date", "sender": "Sender", "subject": "Subject", "why": "Reason", "score": "Spam score",
        "expires": "Deleted from", "no_subject": "(no subject)", "attachment": "Attachment",
        "release": "Deliver", "release_learn": "Deliver and learn as wanted",
        "allow_sender": "Always allow this sender", "delete": "Delete", "open": "View in the portal",
        "needs_approval": "Only an administrator can release this message; you can request its release "
                          "in the portal.",
        "confirm": "Each link opens a page where you confirm the action.",
        "portal": "All your held messages and your settings (also how often this digest comes) are in "
                  "the portal:",
        "footer": "This message was generated automatically.",
        "date_format": "%Y-%m-%d %H:%M",
    },
}


@dataclass(frozen=True, slots=True)
class DigestMail:
    """A composed digest: the raw message and its Message-ID (without the angle brackets)."""

    raw: bytes
    message_id_header: str


def shown(value: str, limit: int = MAX_SHOWN) -> str:
    """A value from a held message, fit to show: on one line, control and format (bidi) characters replaced, cut."""
    cleaned = " ".join(value.split())  # tabs, line breaks (also U+2028) and runs of spaces: one space
    cleaned = "".join("\ufffd" if unicodedata.category(c) in ("Cc", "Cf") else c for c in cleaned)
    return cleaned if len(cleaned) <= limit else cleaned[:limit - 1] + "…"


def entry_links(key: bytes, base_url: str, entry: Entry) -> dict[str, str]:
    """The entry's links, action → URL; each token names this one entry and action and expires with it."""
    expires = epoch_from_iso(entry.expires)
    actions = APPROVAL_ACTIONS if entry.needs_approval else ENTRY_ACTIONS
    root = base_url.rstrip("/")
    return {action: f"{root}/l/{make_link_token(key, entry.id, action, expires)}" for action in actions}


def digest_subject(count: int, language: str) -> str:
    texts = TEXTS[language]
    return texts["subject_one"] if count == 1 else texts["subject_many"].format(n=count)


def _when(iso: str, texts: dict[str, str]) -> str:
    """An event time (ISO 8601, UTC) in the machine's local time, as the language writes dates."""
    try:
        return datetime.fromtimestamp(epoch_from_iso(iso)).strftime(texts["date_format"])
    except (ValueError, OverflowError, OSError):
        return shown(iso)


def _rows(entry: Entry, texts: dict[str, str]) -> list[tuple[str, str]]:
    """(label, value) of one entry, the values as shown (not yet escaped for HTML)."""
    sender = entry.header_from or entry.sender or "<>"
    rows = [(texts["date"], _when(entry.time, texts)), (texts["sender"], shown(sender)),
            (texts["subject"], shown(entry.subject) if entry.subject.strip() else texts["no_subject"])]
    if entry.kind == "part" and entry.filename:
        rows.append((texts["attachment"], shown(entry.filename)))
    rows.append((texts["why"], shown(entry.reason, 300)))
    if entry.score is not None:
        rows.append((texts["score"], f"{entry.score:.1f}"))
    rows.append((texts["expires"], _when(entry.expires, texts)))
    return rows


def _plain(user: str, entries: Sequence[Entry], links: Callable[[Entry], dict[str, str]], sign_in: str,
           texts: dict[str, str]) -> str:
    lines = [texts["intro"].format(user=user), "", texts["confirm"], ""]
    for number, entry in enumerate(entries, 1):
        lines.append(f"{number}.")
        lines.extend(f"   {label}: {value}" for label, value in _rows(entry, texts))
        if entry.needs_approval:
            lines.append(f"   {texts['needs_approval']}")
        lines.extend(f"   {texts[action]}:\n   {url}" for action, url in links(entry).items())
        lines.append("")
    lines += [texts["portal"], sign_in, "", "-- ", texts["footer"], ""]
    return "\n".join(lines)


def _html(user: str, entries: Sequence[Entry], links: Callable[[Entry], dict[str, str]], sign_in: str,
          texts: dict[str, str], language: str) -> str:
    e = html.escape
    parts = [f'<!DOCTYPE html>\n<html lang="{language}"><head><meta charset="utf-8">'
             f"<title>{e(digest_subject(len(entries), language))}</title></head>\n"
             '<body style="font-family: sans-serif">\n'
             f"<p>{e(texts['intro'].format(user=user))}</p>\n<p>{e(texts['confirm'])}</p>\n"]
    for entry in entries:
        parts.append('<table style="border-collapse: collapse; margin-bottom: 1.5em">\n')
        for label, value in _rows(entry, texts):
            parts.append(f'<tr><th style="text-align: left; padding-right: 1em">{e(label)}</th>'
                         f"<td>{e(value)}</td></tr>\n")
        if entry.needs_approval:
            parts.append(f'<tr><td colspan="2">{e(texts["needs_approval"])}</td></tr>\n')
        actions = " | ".join(f'<a href="{e(url)}">{e(texts[action])}</a>' for action, url in links(entry).items())
        parts.append(f'<tr><td colspan="2">{actions}</td></tr>\n</table>\n')
    parts.append(f'<p>{e(texts["portal"])} <a href="{e(sign_in)}">{e(sign_in)}</a></p>\n'
                 f"<p>{e(texts['footer'])}</p>\n</body></html>\n")
    return "".join(parts)


def compose_digest(user: str, entries: Sequence[Entry], *, language: str, key: bytes, base_url: str,
                   sender: str, from_name: str, hostname: str, now: datetime | None = None) -> DigestMail:
    """The digest for `user` listing `entries` (oldest first), in `language` ("de" or "en")."""
    texts = TEXTS.get(language) or TEXTS["de"]
    language = language if language in TEXTS else "de"
    ordered = sorted(entries, key=lambda entry: entry.time)
    sign_in = base_url.rstrip("/") + SIGN_IN_PATH
    cached: dict[str, dict[str, str]] = {}

    def links(entry: Entry) -> dict[str, str]:  # the same URLs in both parts
        return cached.setdefault(entry.id, entry_links(key, base_url, entry))

    message = EmailMessage(policy=SMTP)
    message["From"] = Address(display_name=from_name, addr_spec=sender)
    message["To"] = user
    message["Subject"] = digest_subject(len(ordered), language)
    message["Date"] = format_datetime((now or datetime.now()).astimezone())
    message_id = make_msgid("digest", domain=hostname)
    message["Message-ID"] = message_id
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(_plain(user, ordered, links, sign_in, texts), subtype="plain", charset="utf-8",
                        cte="quoted-printable")
    message.add_alternative(_html(user, ordered, links, sign_in, texts, language), subtype="html",
                            charset="utf-8", cte="quoted-printable")
    message["Content-Language"] = language  # after the parts: set_content moves Content-* fields into them
    return DigestMail(raw=message.as_bytes(), message_id_header=message_id.strip("<>"))
