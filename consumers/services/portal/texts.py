"""The portal's words in German and English: one catalogue, `t(key, lang, **values)`.

Every sentence a page, a flash message or an error page shows is a key here, with a text per
language (the same keys in both: a test walks the catalogue, the templates and the modules). Values
are filled in with `str.format`; the templates get `t` bound to the page's language, and Jinja2's
autoescape escapes the result like any other value, so a value from a message stays text.

German addresses the person as "Sie", as the digest (`consumers.services.digest.compose`) does.
Which language a request gets is `language` (the switch, the user's setting, Accept-Language, the site).
"""
from __future__ import annotations

from typing import Any

__all__ = ["TEXTS", "LANGUAGE_NAMES", "t", "language_of", "choose_language", "accepted_language"]

LANGUAGE_NAMES = {"de": "Deutsch", "en": "English"}  # each in its own language: the switch shows them so

TEXTS: dict[str, dict[str, str]] = {
    "de": {
        # base.html
        "site.title": "Quarantäne", "site.brand": "poststelle · Quarantäne", "nav.quarantine": "Meine Quarantäne",
        "nav.settings": "Einstellungen", "nav.admin": "Verwaltung", "nav.sign_out": "Abmelden",
        "nav.language": "Sprache",
        # login.html
        "login.title": "Anmelden", "login.intro": "Melden Sie sich mit Ihrem Mail-Konto an (dieselbe Anmeldung und "
                                                  "dasselbe Passwort wie beim Senden von Mail).",
        "login.name": "Benutzername oder Adresse", "login.password": "Passwort", "login.submit": "Anmelden",
        "login.too_many": "Zu viele falsche Passwörter. Versuchen Sie es in etwa {minutes} Minute(n) wieder.",
        "login.directory_down": "Das Verzeichnis antwortet nicht; versuchen Sie es in einer Minute wieder.",
        "login.wrong": "Benutzername oder Passwort falsch.", "login.signed_out": "Abgemeldet.",
        # list.html and the filters
        "list.title": "Meine Quarantäne",
        "list.intro_one": "Zurückgehaltene Mail für {addresses}: insgesamt 1 Eintrag.",
        "list.intro_many": "Zurückgehaltene Mail für {addresses}: insgesamt {n} Einträge.",
        "list.intro_hint": "Öffnen Sie einen Eintrag, um seinen Text zu sehen, ihn zuzustellen oder zu löschen.",
        "list.search": "Suche", "list.search_hint": "Absender, Betreff", "list.sort": "Sortieren nach",
        "list.show": "Anzeigen", "list.empty": "Hier ist nichts.",
        "list.empty_filtered": "Hier ist nichts für diese Filter.",
        "filter.category": "Kategorie", "filter.status": "Status", "filter.all": "alle",
        "col.date": "Datum", "col.from": "Von", "col.subject": "Betreff", "col.held_for": "Grund",
        "col.score": "Wert", "col.status": "Status", "col.recipient": "Empfänger",
        "col.requested_for": "Angefordert für",
        "sort.date": "Datum", "sort.score": "Spam-Wert", "sort.sender": "Absender",
        "status.open": "offen", "status.held": "zurückgehalten", "status.requested": "angefordert",
        "status.released": "zugestellt", "status.deleted": "gelöscht", "status.expired": "abgelaufen",
        "status.all": "alle",
        "category.spam": "Spam", "category.virus": "Virus", "category.attachment": "Anhang",
        "category.dmarc": "DMARC", "category.rejected": "abgelehnt", "category.other": "andere",
        "value.no_subject": "(kein Betreff)", "value.no_sender": "(kein Absender)", "value.none": "(keiner)",
        "value.bounce": "(keiner: eine Unzustellbarkeitsmeldung)", "value.no_name": "(ohne Namen)",
        "value.no_text": "(kein Text)",
        # _entry_head.html, entry.html, _preview.html
        "entry.title": "Eintrag", "entry.back": "zurück", "entry.from": "Von",
        "entry.sender": "Absender (Umschlag)", "entry.to": "An", "entry.subject": "Betreff",
        "entry.received": "Empfangen", "entry.category": "Kategorie",
        "entry.admin_only": "(gibt die Verwaltung frei)", "entry.held_for": "Grund",
        "entry.score": "Spam-Wert", "entry.held_part": "Zurückgehaltener Anhang", "entry.part": "Teil {part}",
        "entry.size": "Größe", "entry.status": "Status", "entry.kept_until": "Aufbewahrt bis",
        "entry.approve": "Freigabe genehmigen", "entry.deny": "Ablehnen", "entry.release": "Zustellen",
        "entry.delete": "Löschen", "entry.requested": "Freigabe angefordert: die Verwaltung entscheidet.",
        "entry.needs_admin": "Diese Nachricht wurde aus einem Grund zurückgehalten, den nur die Verwaltung "
                             "aufheben darf ({category}). Sie können die Freigabe anfordern.",
        "entry.request": "Freigabe anfordern", "entry.release_learn": "Zustellen und als erwünscht lernen",
        "entry.allow_sender": "{sender} immer erlauben", "entry.block_sender": "{sender} blockieren",
        "entry.timeline": "Was geschah (UTC)",
        "preview.title": "Vorschau",
        "preview.note": "Nur Text: Links werden nicht aufgerufen, Bilder und HTML nicht angezeigt.",
        "preview.truncated": "Der Text ist länger; die Vorschau zeigt seinen Anfang.",
        "preview.attachments": "Anhänge", "preview.held": "(zurückgehalten)",
        "preview.missing": "Die gespeicherte Nachricht ist nicht mehr vorhanden.",
        # settings.html
        "settings.title": "Einstellungen",
        "settings.quarantine": "Spam in meiner Quarantäne zurückhalten (aus: Spam wird zugestellt, im Betreff "
                               "markiert)",
        "settings.now": "Jetzt: {origin}.", "origin.self": "Ihre eigene Einstellung",
        "origin.ldap": "aus dem Verzeichnis", "origin.site": "die Voreinstellung der Schule",
        "settings.digest": "Übersicht neuer Einträge in der Quarantäne",
        "digest.daily": "täglich", "digest.weekly": "wöchentlich", "digest.off": "aus",
        "settings.language": "Sprache des Portals und der Übersicht",
        "settings.allow": "Diese Absender immer erlauben (eine Adresse oder @domain pro Zeile)",
        "settings.block": "Diese Absender blockieren", "settings.save": "Speichern",
        "settings.last": "Zuletzt geändert {time} von {by}.", "settings.unchanged": "Nichts geändert.",
        "settings.saved": "Gespeichert: {keys}.", "settings.unavailable": "Einstellungen nicht verfügbar",
        "settings.cannot_read": "Ihre Einstellungen können gerade nicht gelesen werden ({why}).",
        "settings.cannot_change": "Ihre Einstellungen können gerade nicht geändert werden ({why}).",
        "setting.quarantine": "Quarantäne", "setting.digest": "Übersicht", "setting.language": "Sprache",
        "setting.allow_senders": "erlaubte Absender", "setting.block_senders": "blockierte Absender",
        # admin.html
        "admin.title": "Verwaltung", "admin.heading": "Verwaltung der Quarantäne",
        "admin.open_entries": "Offene Einträge", "admin.stored": "Gespeicherte Nachrichten",
        "admin.oldest": "Ältester Eintrag", "admin.none": "keiner", "admin.requests": "Freigabeanforderungen",
        "admin.approve": "Genehmigen", "admin.deny": "Ablehnen", "admin.no_requests": "Keine offenen Anforderungen.",
        "admin.search": "Suche", "admin.recipient": "Empfänger", "admin.text": "Text",
        "admin.found": "{found} gefunden.", "admin.found_some": "{found} gefunden, die neuesten {shown} angezeigt.",
        "admin.select": "auswählen", "admin.release_checked": "Ausgewählte zustellen",
        "admin.delete_checked": "Ausgewählte löschen",
        "admin.bulk_released": "{done} von {total} Einträgen zugestellt.",
        "admin.bulk_deleted": "{done} von {total} Einträgen gelöscht.", "admin.bulk_refused": "Abgelehnt:",
        # link.html, link_done.html, link_error.html
        "link.title": "Quarantäne-Link", "link.held": "Zurückgehaltene Nachricht", "link.confirm": "Bestätigen",
        "link.only_this": "Dieser Link zeigt nur diese eine Nachricht.", "link.sign_in": "Melden Sie sich an",
        "link.sign_in_rest": ", um Ihre ganze Quarantäne zu sehen.", "link.will": "Dieser Link wird",
        "link.will_end": ".", "link.nothing_yet": "Nichts geschieht, bevor Sie bestätigen.",
        "link.done": "Erledigt", "link.not_done": "Nicht erledigt", "link.from": "von {sender}",
        "link.still": "Sie können sich trotzdem", "link.still_sign_in": "anmelden",
        "link.still_rest": "und Ihre Quarantäne ansehen.",
        "words.release": "diese Nachricht freigeben: in Ihr Postfach zustellen",
        "words.release_learn": "diese Nachricht zustellen und als erwünscht lernen",
        "words.allow_sender": "diesen Absender immer erlauben (auf Ihre Liste erlaubter Absender setzen)",
        "words.delete": "diese Nachricht aus der Quarantäne löschen", "words.open": "diese Nachricht zeigen",
        "words.request": "die Verwaltung um die Freigabe dieser Nachricht bitten (sie wurde aus einem Grund "
                         "zurückgehalten, den nur die Verwaltung aufheben darf)",
        "why.malformed.title": "Unvollständiger Link",
        "why.malformed": "Dieser Link ist kein vollständiger Quarantäne-Link. Wenn Sie ihn aus der Übersicht "
                         "kopiert haben, prüfen Sie, ob Sie ihn ganz kopiert haben.",
        "why.forged.title": "Ungültiger Link",
        "why.forged": "Dieser Link stammt nicht von diesem Mail-Gateway, oder er wurde verändert. "
                      "Es wurde nichts getan.",
        "why.expired.title": "Abgelaufener Link",
        "why.expired": "Dieser Link ist abgelaufen: die Nachricht, für die er war, ist nicht mehr in der "
                       "Quarantäne. Es wurde nichts getan.",
        "why.gone.title": "Nachricht nicht mehr da",
        "why.gone": "Die Nachricht, für die dieser Link ist, ist nicht mehr in der Quarantäne (gelöscht oder "
                    "abgelaufen).",
        "why.released.title": "Schon zugestellt",
        "why.released": "Diese Nachricht wurde schon freigegeben und zugestellt; sie wird nicht noch einmal "
                        "zugestellt.",
        # acting.py: what became of an action
        "done.requested": "Freigabe angefordert: die Verwaltung entscheidet, ob diese Nachricht zugestellt wird.",
        "done.released": "Freigegeben: die Nachricht ist unterwegs an {recipient}.",
        "done.released_learned": "Freigegeben und als erwünscht gelernt: die Nachricht ist unterwegs an "
                                 "{recipient}.",
        "done.approved": "Genehmigt: die Nachricht ist unterwegs an {recipient}.",
        "done.denied": "Anforderung abgelehnt: die Nachricht bleibt in der Quarantäne.",
        "done.deleted": "Gelöscht.",
        "done.allowed": "{sender} steht auf der Liste der erlaubten Absender von {address}.",
        "done.blocked": "{sender} steht jetzt auf der Liste der blockierten Absender.",
        "done.blocked_already": "{sender} steht schon auf der Liste der blockierten Absender.",
        "done.no_sender": "diese Nachricht hat keine Absenderadresse (sie ist eine Unzustellbarkeitsmeldung).",
        "done.not_done": "Nicht erledigt: {why}",
        "done.no_answer": "das Mailsystem hat nicht geantwortet. Versuchen Sie es in einer Minute wieder.",
        # error pages (views.http_error)
        "error.back": "Zurück zum Portal", "error.title": "Fehler", "error.400": "Ungültige Anfrage",
        "error.403": "Nicht erlaubt", "error.404": "Nicht gefunden", "error.405": "Methode nicht erlaubt",
        "error.413": "Zu groß", "error.429": "Zu viele Versuche", "error.503": "Nicht verfügbar",
        "error.not_found": "Diese Seite gibt es nicht, oder sie gehört nicht Ihnen.",
        "error.csrf": "Das Formular wurde nicht von einer Seite dieses Portals gesendet (oder die Sitzung ist "
                      "abgelaufen). Laden Sie die Seite neu und versuchen Sie es noch einmal.",
        "error.starting": "Die Quarantäne wird noch gelesen; versuchen Sie es in ein paar Sekunden wieder.",
        "error.bulk_choice": "Wählen Sie zustellen oder löschen.",
        "error.too_large": "Die Anfrage ist zu groß.",
        # the quarantine's own timeline of an entry (preview.entry_timeline, history.UNAVAILABLE)
        "timeline.unavailable": "Der vollständige Weg der Nachricht ist gerade nicht verfügbar; dies weiß die "
                                "Quarantäne von ihr.",
        "timeline.held": "von der Prüfung {stage} zurückgehalten: {reason}",
        "timeline.part_held": "Anhang {name} zurückgehalten, der Rest zugestellt: {reason}",
        "timeline.release": "freigegeben: ins Postfach zugestellt",
        "timeline.approve": "Freigabe von der Verwaltung genehmigt: ins Postfach zugestellt",
        "timeline.request_release": "Freigabe angefordert", "timeline.deny": "Freigabeanforderung abgelehnt",
        "timeline.delete": "gelöscht", "timeline.expire": "entfernt: ihre Zeit in der Quarantäne war um",
        "timeline.learned": "als erwünscht gelernt", "timeline.allowed": "Absender erlaubt",
        "who.portal": "von {name} im Portal", "who.link": "von {name} über einen Link der Übersicht",
        "who.admin": "von der Verwaltung ({name})", "who.cli": "vom Betrieb", "who.cleanup": "von der Aufräumung",
        "who.other": "von {name}",
    },
    "en": {
        "site.title": "Quarantine", "site.brand": "poststelle · quarantine", "nav.quarantine": "My quarantine",
        "nav.settings": "Settings", "nav.admin": "Admin", "nav.sign_out": "Sign out", "nav.language": "Language",
        "login.title": "Sign in", "login.intro": "Sign in with your mail account (the same login and password as "
                                                 "for sending mail).",
        "login.name": "Login or address", "login.password": "Password", "login.submit": "Sign in",
        "login.too_many": "Too many wrong passwords. Try again in about {minutes} minute(s).",
        "login.directory_down": "The directory does not answer; try again in a minute.",
        "login.wrong": "Wrong login or password.", "login.signed_out": "Signed out.",
        "list.title": "My quarantine",
        "list.intro_one": "Mail held back for {addresses}: 1 entry in all.",
        "list.intro_many": "Mail held back for {addresses}: {n} entries in all.",
        "list.intro_hint": "Open an entry to see its text, release it or delete it.",
        "list.search": "Search", "list.search_hint": "sender, subject", "list.sort": "Sort by",
        "list.show": "Show", "list.empty": "Nothing here.", "list.empty_filtered": "Nothing here for these filters.",
        "filter.category": "Category", "filter.status": "Status", "filter.all": "all",
        "col.date": "Date", "col.from": "From", "col.subject": "Subject", "col.held_for": "Held for",
        "col.score": "Score", "col.status": "Status", "col.recipient": "Recipient", "col.requested_for": "Requested for",
        "sort.date": "date", "sort.score": "score", "sort.sender": "sender",
        "status.open": "open", "status.held": "held", "status.requested": "requested", "status.released": "released",
        "status.deleted": "deleted", "status.expired": "expired", "status.all": "all",
        "category.spam": "spam", "category.virus": "virus", "category.attachment": "attachment",
        "category.dmarc": "dmarc", "category.rejected": "rejected", "category.other": "other",
        "value.no_subject": "(no subject)", "value.no_sender": "(no sender)", "value.none": "(none)",
        "value.bounce": "(none: a bounce)", "value.no_name": "(no name)", "value.no_text": "(no text)",
        "entry.title": "Entry", "entry.back": "back", "entry.from": "From", "entry.sender": "Sender (envelope)",
        "entry.to": "To", "entry.subject": "Subject", "entry.received": "Received", "entry.category": "Category",
        "entry.admin_only": "(released by an administrator)", "entry.held_for": "Held for",
        "entry.score": "Spam score", "entry.held_part": "Held attachment", "entry.part": "part {part}",
        "entry.size": "Size", "entry.status": "Status", "entry.kept_until": "Kept until",
        "entry.approve": "Approve release", "entry.deny": "Deny", "entry.release": "Release", "entry.delete": "Delete",
        "entry.requested": "Release requested: an administrator decides.",
        "entry.needs_admin": "This message was held for a reason only an administrator may overrule ({category}). "
                             "You can ask for it.",
        "entry.request": "Request release", "entry.release_learn": "Release and learn as not spam",
        "entry.allow_sender": "Always allow {sender}", "entry.block_sender": "Block {sender}",
        "entry.timeline": "What happened (UTC)",
        "preview.title": "Preview",
        "preview.note": "Text only: links are not followed, images and HTML are not shown.",
        "preview.truncated": "The text is longer; the preview shows its beginning.",
        "preview.attachments": "Attachments", "preview.held": "(held back)",
        "preview.missing": "The stored message is no longer there.",
        "settings.title": "Settings",
        "settings.quarantine": "Hold spam in my quarantine (off: spam is delivered, marked in its subject)",
        "settings.now": "Now: {origin}.", "origin.self": "your own setting", "origin.ldap": "from the directory",
        "origin.site": "the site's default", "settings.digest": "Digest of new quarantine entries",
        "digest.daily": "daily", "digest.weekly": "weekly", "digest.off": "off",
        "settings.language": "Language of the portal and the digest",
        "settings.allow": "Always allow these senders (one address or @domain per line)",
        "settings.block": "Block these senders", "settings.save": "Save",
        "settings.last": "Last change {time} by {by}.", "settings.unchanged": "Nothing changed.",
        "settings.saved": "Saved: {keys}.", "settings.unavailable": "Settings unavailable",
        "settings.cannot_read": "Your settings cannot be read now ({why}).",
        "settings.cannot_change": "Your settings cannot be changed now ({why}).",
        "setting.quarantine": "quarantine", "setting.digest": "digest", "setting.language": "language",
        "setting.allow_senders": "allow_senders", "setting.block_senders": "block_senders",
        "admin.title": "Admin", "admin.heading": "Quarantine administration", "admin.open_entries": "Open entries",
        "admin.stored": "Stored messages", "admin.oldest": "Oldest entry", "admin.none": "none",
        "admin.requests": "Release requests", "admin.approve": "Approve", "admin.deny": "Deny",
        "admin.no_requests": "No open requests.", "admin.search": "Search", "admin.recipient": "Recipient",
        "admin.text": "Text", "admin.found": "{found} found.",
        "admin.found_some": "{found} found, the newest {shown} shown.",
        "admin.select": "select", "admin.release_checked": "Release checked", "admin.delete_checked": "Delete checked",
        "admin.bulk_released": "Released {done} of {total} entries.",
        "admin.bulk_deleted": "Deleted {done} of {total} entries.", "admin.bulk_refused": "Refused:",
        "link.title": "Quarantine link", "link.held": "Held message", "link.confirm": "Confirm",
        "link.only_this": "This link shows this one message only.", "link.sign_in": "Sign in",
        "link.sign_in_rest": " to see your whole quarantine.", "link.will": "This link will", "link.will_end": ".",
        "link.nothing_yet": "Nothing happens until you confirm.", "link.done": "Done", "link.not_done": "Not done",
        "link.from": "from {sender}", "link.still": "You can still", "link.still_sign_in": "sign in",
        "link.still_rest": "and look at your quarantine.",
        "words.release": "release this message: deliver it to your mailbox",
        "words.release_learn": "release this message and learn it as not spam",
        "words.allow_sender": "always allow this sender (put it on your allow list)",
        "words.delete": "delete this message from the quarantine", "words.open": "show this message",
        "words.request": "ask an administrator to release this message (it was held for a reason only an "
                         "administrator may overrule)",
        "why.malformed.title": "Incomplete link",
        "why.malformed": "This link is not a complete quarantine link. If you copied it from the digest, make sure "
                         "you copied all of it.",
        "why.forged.title": "Invalid link",
        "why.forged": "This link was not issued by this mail gateway, or it was altered. Nothing was done.",
        "why.expired.title": "Expired link",
        "why.expired": "This link has expired: the message it was for is no longer in the quarantine. "
                       "Nothing was done.",
        "why.gone.title": "Message gone",
        "why.gone": "The message this link is for is no longer in the quarantine (deleted or expired).",
        "why.released.title": "Already released",
        "why.released": "This message was already released and delivered; it is not delivered again.",
        "done.requested": "Release requested: an administrator decides whether this message is delivered.",
        "done.released": "Released: the message is on its way to {recipient}.",
        "done.released_learned": "Released and learned as not spam: the message is on its way to {recipient}.",
        "done.approved": "Approved: the message is on its way to {recipient}.",
        "done.denied": "Request denied: the message stays in the quarantine.",
        "done.deleted": "Deleted.",
        "done.allowed": "{sender} is on the list of allowed senders of {address}.",
        "done.blocked": "{sender} is now on the list of blocked senders.",
        "done.blocked_already": "{sender} is already on the list of blocked senders.",
        "done.no_sender": "this message has no sender address (it is a bounce).",
        "done.not_done": "Not done: {why}",
        "done.no_answer": "the mail system did not answer. Try again in a minute.",
        "error.back": "Back to the portal", "error.title": "Error", "error.400": "Bad request",
        "error.403": "Not allowed", "error.404": "Not found", "error.405": "Method not allowed",
        "error.413": "Too large", "error.429": "Too many attempts", "error.503": "Unavailable",
        "error.not_found": "There is no such page, or it is not yours.",
        "error.csrf": "The form was not sent from this portal's page (or the session ended). Reload the page and "
                      "try again.",
        "error.starting": "The quarantine is still being read; try again in a few seconds.",
        "error.bulk_choice": "Choose release or delete.",
        "error.too_large": "The request is too large.",
        "timeline.unavailable": "The message's full path is not available right now; this is what the quarantine "
                                "knows of it.",
        "timeline.held": "held by the {stage} check: {reason}",
        "timeline.part_held": "attachment {name} held back, the rest delivered: {reason}",
        "timeline.release": "released: delivered to the mailbox",
        "timeline.approve": "release approved by an administrator: delivered to the mailbox",
        "timeline.request_release": "release requested", "timeline.deny": "release request denied",
        "timeline.delete": "deleted", "timeline.expire": "removed: its time in the quarantine was over",
        "timeline.learned": "learned as ham", "timeline.allowed": "sender allowed",
        "who.portal": "by {name} in the portal", "who.link": "by {name} through a digest link",
        "who.admin": "by the administrator {name}", "who.cli": "by an operator", "who.cleanup": "by the cleanup",
        "who.other": "by {name}",
    },
}


def t(key: str, lang: str, **values: object) -> str:
    """The text of `key` in `lang` (English when the language is unknown), with `values` filled in.
    An unknown key is a KeyError: a page must not show a key instead of words (the tests find them all)."""
    text = TEXTS.get(lang, TEXTS["en"])[key]
    return text.format(**values) if values else text


def accepted_language(header: str) -> str | None:
    """The language of ours the browser prefers most (RFC 9110 Accept-Language, with q weights), or None."""
    best, best_q = None, 0.0
    for position, item in enumerate(header.split(",")[:30]):
        tag, _, params = item.strip().partition(";")
        primary = tag.strip().lower().split("-")[0]
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        q -= position * 1e-6  # equal weights: the first named wins
        if primary in TEXTS and q > 0 and q > best_q:
            best, best_q = primary, q
    return best


def choose_language(switched: object, own: str | None, accept: str, site: str) -> str:
    """The page's language: the switch of this session, else the signed-in user's setting, else what the
    browser asks for, else the site's `[users] language`."""
    if isinstance(switched, str) and switched in TEXTS:
        return switched
    if own in TEXTS:
        return own  # type: ignore[return-value]
    return accepted_language(accept) or (site if site in TEXTS else "de")


def language_of(request: Any) -> str:
    """A request's language (de or en), as `language.ChooseLanguage` decided it before the page."""
    lang = getattr(request.state, "lang", None)
    return lang if lang in TEXTS else "de"
