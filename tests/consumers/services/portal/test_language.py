"""The portal in German and English: every key a page or module uses is in both catalogues, every page
renders in both languages, and the language comes from the switch, else the user's setting, else the
browser's Accept-Language, else the site's `[users] language`."""
from __future__ import annotations

import re
import string
from pathlib import Path

import pytest
from markupsafe import escape

from consumers.services.portal import acting, links, preview
from consumers.services.portal.pages import SORTS, STATUSES
from consumers.services.portal.texts import TEXTS, accepted_language, choose_language, t
from consumers.services.portal.usersettings import FORM_KEYS
from consumers.services.portal.views import _TITLED
from pipeline.links import make_link_token
from pipeline.quarantine_settings import CATEGORIES
from pipeline.settings import LANGUAGES
from tests.consumers.services.portal.conftest import ADMIN, KEY, LENA, MAX, running_portal

PORTAL = Path(acting.__file__).parent
_CALL = re.compile(r"""\bt\(\s*["']([a-z_]+\.[a-z_.]+)["']""")  # t("key" ...) in templates and modules
_QUOTED = re.compile(r"""["']([a-z_]+\.[a-z_.]+)["']""")  # any "word.word": a key where it is one (error.csrf)
SOURCES = [*PORTAL.glob("templates/*.html"), *(p for p in PORTAL.glob("*.py") if p.name != "texts.py")]


def _called_keys() -> set[str]:
    """The keys `t` is called with literally: each must be in the catalogue."""
    return {k for path in SOURCES for k in _CALL.findall(path.read_text())}


def _used_keys() -> set[str]:
    """Every key the portal uses: literally, as a quoted key (raised, passed on), or built from a value."""
    keys = _called_keys() | {k for path in SOURCES for k in _QUOTED.findall(path.read_text()) if k in TEXTS["en"]}
    built = {
        "category": CATEGORIES, "status": STATUSES, "sort": SORTS, "digest": ("daily", "weekly", "off"),
        "origin": ("self", "ldap", "site"), "setting": FORM_KEYS, "who": ("portal", "link", "admin", "cli", "cleanup"),
        "timeline": preview._ACTIONS, "error": [str(s) for s in _TITLED], "admin": ("bulk_released", "bulk_deleted"),
    }
    keys |= {f"{prefix}.{value}" for prefix, values in built.items() for value in values}
    keys |= {f"why.{why}{end}" for why in links.WHY for end in ("", ".title")}
    keys |= {*links.LINK_WORDS.values(), "words.request", "preview.missing", "timeline.unavailable"}
    return keys


def _fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_both_languages_have_every_key_the_portal_uses_with_the_same_placeholders():
    assert set(TEXTS) == set(LANGUAGES)
    assert set(TEXTS["de"]) == set(TEXTS["en"])
    assert _called_keys() - set(TEXTS["en"]) == set()
    used = _used_keys()
    assert len(used) > 150
    assert used - set(TEXTS["en"]) == set()
    assert set(TEXTS["en"]) - used == set(), "keys nobody uses"
    for key in TEXTS["en"]:
        assert _fields(TEXTS["de"][key]) == _fields(TEXTS["en"][key]), key
    assert all(TEXTS["de"][k] != TEXTS["en"][k] for k in ("login.title", "nav.quarantine", "done.released"))


def test_the_browsers_language_by_weight():
    assert accepted_language("de-DE,de;q=0.9,en;q=0.8") == "de"
    assert accepted_language("fr-FR, en;q=0.5, de;q=0.7") == "de"
    assert accepted_language("en-GB,en;q=0.9") == "en"
    assert accepted_language("fr, it;q=0.5") is None
    assert accepted_language("de;q=0, en;q=0.1") == "en"
    assert accepted_language("") is None and accepted_language("de;q=x") is None
    assert choose_language("en", "de", "de", "de") == "en"  # the switch over all
    assert choose_language(None, "de", "en", "en") == "de"  # then the user's setting
    assert choose_language(None, None, "en", "de") == "en"  # then the browser
    assert choose_language("xx", None, "", "en") == "en"  # then the site
    with pytest.raises(KeyError):
        t("no.such_key", "de")


async def _pages(h) -> dict[str, int]:
    """Every page of the portal (path → expected status), with what they need in the quarantine."""
    spam = h.spam((LENA,))[LENA]
    exe = h.exe(LENA)
    release = make_link_token(KEY, spam, "release", h.portal.clock() + 3600)
    open_link = make_link_token(KEY, exe, "open", h.portal.clock() + 3600)
    request = make_link_token(KEY, exe, "release", h.portal.clock() + 3600)
    return {"/login": 200, "/l/" + release: 200, "/l/" + open_link: 200, "/l/" + request: 200,
            "/l/short": 400, "/l/" + release[:-4] + "AAAA": 400, "/quarantine": 200, f"/quarantine/{spam}": 200,
            f"/quarantine/{exe}": 200, "/settings": 200, "/quarantine/nope": 404, "/admin": 404}


@pytest.mark.parametrize("lang", LANGUAGES)
async def test_every_page_renders_in_both_languages(tmp_path, lang):
    other = next(x for x in LANGUAGES if x != lang)
    async with running_portal(tmp_path, language=lang) as h:
        pages = await _pages(h)
        await h.sign_in("lena.mueller")
        for path, status in pages.items():
            if path.startswith("/l/"):
                continue
            reply = await h.client.get(path)
            assert reply.status_code == status, path
            assert f'<html lang="{lang}">' in reply.text and t("nav.quarantine", lang) in reply.text, path
            assert f'id="lang-{other}"' in reply.text, path  # the switch
        assert t("list.intro_hint", lang) in (await h.client.get("/quarantine")).text
        entry = (await h.client.get(f"/quarantine/{[p for p in pages if p.startswith('/quarantine/')][0][12:]}")).text
        assert t("preview.note", lang) in entry and t("entry.timeline", lang) in entry
        await h.sign_in("it.admin")
        for path in ("/admin", f"/admin/entry/{h.exe(ADMIN)}"):
            reply = await h.client.get(path)
            assert reply.status_code == 200 and f'<html lang="{lang}">' in reply.text, path
        await h.client.post("/logout", data={"csrf": await h.csrf("/admin")})
        for path, status in pages.items():  # signed out: the link pages, the login page; the rest redirect
            reply = await h.client.get(path)
            if path.startswith("/l/") or path == "/login":
                assert reply.status_code == status and f'<html lang="{lang}">' in reply.text, path
        forged = [p for p in pages if p.endswith("AAAA")][0]
        assert t("why.forged", lang) in (await h.client.get(forged)).text
        assert str(escape(t("error.csrf", lang))) in (await h.client.post("/logout", data={"csrf": "x"})).text


@pytest.fixture
async def german_site(tmp_path):
    async with running_portal(tmp_path, language="de") as h:
        yield h


async def test_before_sign_in_the_browser_decides_then_the_site(german_site):
    h = german_site
    assert '<html lang="de">' in (await h.client.get("/login")).text
    page = (await h.client.get("/login", headers={"Accept-Language": "en-US,en;q=0.9,de;q=0.8"})).text
    assert '<html lang="en">' in page and "Sign in with your mail account" in page


async def test_signed_in_the_users_setting_decides_over_the_browser(german_site):
    h = german_site
    h.client.headers["Accept-Language"] = "de"
    await h.sign_in("lena.mueller")
    assert "Meine Quarantäne</h1>" in (await h.client.get("/quarantine")).text  # the site's language: de
    reply = await h.post("/settings", {"quarantine": "on", "digest": "daily", "language": "en"}, page="/settings")
    assert reply.status_code == 303
    page = (await h.client.get("/settings")).text
    assert '<html lang="en">' in page and "Saved: quarantine, language." in page
    assert '<option value="en" lang="en" selected>' in page
    assert (await h.portal.users.prefs(LENA)).language == "en"  # the digest's language too
    assert "My quarantine</h1>" in (await h.client.get("/quarantine")).text  # though the browser asks for de


async def test_the_switch_wins_for_the_session_and_carries_over_the_sign_in(german_site):
    h = german_site
    token = await h.csrf("/login")
    reply = await h.client.post("/language", data={"csrf": token, "lang": "en", "back": "/login?next=/settings"})
    assert reply.status_code == 303 and reply.headers["location"] == "/login?next=/settings"
    assert '<html lang="en">' in (await h.client.get("/login", headers={"Accept-Language": "de"})).text
    await h.sign_in("max.mustermann")
    assert "My quarantine</h1>" in (await h.client.get("/quarantine")).text  # over max's setting (de)
    await h.post("/language", {"lang": "de", "back": "//evil.example/x"})
    assert "Meine Quarantäne</h1>" in (await h.client.get("/quarantine")).text
    reply = await h.client.post("/language", data={"lang": "en"})  # no CSRF token: refused, in German
    assert reply.status_code == 403 and "Nicht erlaubt" in reply.text
    # saving a language on the settings page ends the switch: the setting shows
    await h.post("/settings", {"digest": "daily", "language": "en"}, page="/settings")
    assert "Saved: language." in (await h.client.get("/settings")).text
    await h.post("/settings", {"digest": "daily", "language": "de"}, page="/settings")
    assert "Gespeichert: Sprache." in (await h.client.get("/settings")).text


async def test_the_switch_returns_only_to_a_page_of_this_site(german_site):
    h = german_site
    for back, expected in (("//evil.example/x", "/"), ("https://evil.example/", "/"), ("/\\evil", "/"),
                           ("/quarantine?status=all", "/quarantine?status=all"), ("/l/abc-_.def", "/l/abc-_.def")):
        reply = await h.client.post("/language", data={"csrf": await h.csrf(), "lang": "en", "back": back})
        assert reply.headers["location"] == expected, back


async def test_flash_messages_link_pages_and_the_quarantines_timeline_in_german(german_site):
    h = german_site
    ids = h.spam((LENA, MAX))
    await h.sign_in("lena.mueller")
    reply = await h.post(f"/quarantine/{ids[LENA]}/release_learn", page=f"/quarantine/{ids[LENA]}")
    page = (await h.client.get(reply.headers["location"])).text
    assert f"Freigegeben und als erwünscht gelernt: die Nachricht ist unterwegs an {LENA}." in page
    assert "freigegeben: ins Postfach zugestellt (als erwünscht gelernt) von lena.mueller@school.test im Portal" in page
    assert "von der Prüfung spam zurückgehalten: spam: score 9.2" in page
    reply = await h.post(f"/quarantine/{ids[LENA]}/release", page=f"/quarantine/{ids[LENA]}")
    assert "Nicht erledigt: diese Nachricht wurde schon zugestellt" in (await h.client.get(reply.headers["location"])).text
    h.client.cookies.clear()
    token = make_link_token(KEY, ids[LENA], "release", h.portal.clock() + 3600)
    gone = await h.client.get(f"/l/{token}")
    assert gone.status_code == 409 and "Schon zugestellt" in gone.text and 'lang="de"' in gone.text
    token = make_link_token(KEY, ids[MAX], "delete", h.portal.clock() + 3600)
    page = (await h.client.get(f"/l/{token}")).text
    assert "Dieser Link wird <strong>diese Nachricht aus der Quarantäne löschen</strong>." in page
    done = await h.client.post(f"/l/{token}", data={"csrf": await h.csrf(f"/l/{token}")})
    assert done.status_code == 200 and "Gelöscht." in done.text and "Erledigt" in done.text
    assert acting.refusal("a message held for attachment is released only by an administrator; request its "
                          "release instead", "de").startswith("eine wegen attachment zurückgehaltene Nachricht")
    assert acting.refusal("something new", "de") == "something new"
