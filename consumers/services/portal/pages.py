"""The pages of a signed-in user: sign in and out, my quarantine, one entry, my settings.

Every action is a POST with the session's CSRF token, goes through `QuarantineActions` (or, for the
sender lists and settings, `pipeline.state.users`) with ``by="portal:<address>"``, and answers
with a redirect to a page that says what happened (post/redirect/get, so a reload does not repeat
it). An entry the viewer may not see is a 404 (`core.own_entry`).
"""
from __future__ import annotations

import re

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from consumers.services.portal.acting import perform
from consumers.services.portal.auth import sign_in, sign_out, viewer_of
from consumers.services.portal.core import own_entry, portal_of, posted_form, require_viewer
from consumers.services.portal.history import timeline_of
from consumers.services.portal.preview import preview_of
from consumers.services.portal.language import SESSION_LANGUAGE
from consumers.services.portal.security import client_address
from consumers.services.portal.texts import language_of, t
from consumers.services.portal.usersettings import change_settings, form_changes
from consumers.services.portal.views import error_page, redirect, render
from pipeline.clients.directory import DirectoryUnavailable
from pipeline.quarantine_settings import CATEGORIES
from pipeline.state.quarantine import Entry
from pipeline.state.users import SettingError, UserSettingsUnavailable

__all__ = ["home", "login_page", "login", "logout", "my_quarantine", "entry_page", "entry_action",
           "settings_page", "save_settings", "filter_entries", "STATUSES", "SORTS"]

STATUSES = ("open", "held", "requested", "released", "deleted", "expired", "all")
SORTS = {"date": lambda e: e.time, "score": lambda e: (e.score is not None, e.score or 0.0),
         "sender": lambda e: (e.header_from or e.sender).lower()}
ENTRY_ACTIONS = ("release", "release_learn", "request", "delete", "allow_sender", "block_sender")


async def home(request: Request) -> Response:
    return redirect(request, "/quarantine" if viewer_of(request) else "/login")


def _next(value: object) -> str:
    """Where to go after signing in: a path of this site only (no //host, no scheme)."""
    text = value if isinstance(value, str) else ""
    return text if re.fullmatch(r"/[A-Za-z0-9/_\-]*", text) and not text.startswith("//") else "/quarantine"


async def login_page(request: Request) -> Response:
    return render(request, "login.html", {"next": _next(request.query_params.get("next"))})


async def login(request: Request) -> Response:
    portal = portal_of(request)
    form = await posted_form(request)
    name, password = str(form.get("login") or "").strip(), str(form.get("password") or "")
    address = client_address(request)
    context = {"next": _next(form.get("next")), "login": name}
    wait = portal.limiter.blocked(name, address)
    lang = language_of(request)
    if wait:
        minutes = max(1, round(wait / 60))
        return render(request, "login.html", {**context, "error": t("login.too_many", lang, minutes=minutes)},
                      status=429)
    try:
        account = await portal.accounts.authenticate(name, password)
        admin = account is not None and await portal.accounts.is_admin(account)
    except DirectoryUnavailable:
        return render(request, "login.html", {**context, "error": t("login.directory_down", lang)}, status=503)
    if account is None:
        portal.limiter.failed(name, address)
        return render(request, "login.html", {**context, "error": t("login.wrong", lang)}, status=401)
    portal.limiter.succeeded(name)
    switched = request.session.get(SESSION_LANGUAGE)
    sign_in(request, account, admin, name)
    if switched is not None:  # the language switch of the sign-in page holds for the session it starts
        request.session[SESSION_LANGUAGE] = switched
    return redirect(request, context["next"])


async def logout(request: Request) -> Response:
    await posted_form(request)
    lang = language_of(request)
    sign_out(request)
    return redirect(request, "/login", t("login.signed_out", lang))


def filter_entries(entries: list[Entry], category: str, status: str, text: str, sort: str) -> list[Entry]:
    """The entries the list's filters keep, in the order asked for (newest, highest, A first)."""
    needle = text.strip().lower()
    kept = [e for e in entries
            if (not category or e.category == category)
            and (status == "all" or (e.open if status == "open" else e.status == status))
            and (not needle or any(needle in v.lower() for v in (e.sender, e.header_from, e.subject, e.reason)))]
    key = SORTS.get(sort, SORTS["date"])
    return sorted(kept, key=key, reverse=sort != "sender")


def _filters(request: Request) -> dict[str, str]:
    q = request.query_params
    category = q.get("category", "")
    status = q.get("status", "open")
    sort = q.get("sort", "date")
    return {"category": category if category in CATEGORIES else "", "status": status if status in STATUSES else "open",
            "q": q.get("q", "")[:200], "sort": sort if sort in SORTS else "date"}


async def my_quarantine(request: Request) -> Response:
    viewer = require_viewer(request)
    filters = _filters(request)
    mine = portal_of(request).state.for_recipient(*viewer.addresses)
    entries = filter_entries(mine, filters["category"], filters["status"], filters["q"], filters["sort"])
    return render(request, "list.html", {"entries": entries, "filters": filters, "total": len(mine),
                                         "categories": CATEGORIES, "statuses": STATUSES, "sorts": list(SORTS)})


async def entry_page(request: Request) -> Response:
    viewer = require_viewer(request)
    portal = portal_of(request)
    entry = own_entry(request, viewer, request.path_params["entry"])
    timeline, note = await timeline_of(portal.events, entry, viewer.addresses, admin=False,
                                       lang=language_of(request))
    return render(request, "entry.html", {"entry": entry, "preview": preview_of(portal.blobs, entry, portal.message_caps),
                                          "timeline": timeline, "timeline_note": note, "admin_view": False})


async def entry_action(request: Request) -> Response:
    viewer = require_viewer(request)
    form = await posted_form(request)
    entry = own_entry(request, viewer, request.path_params["entry"])
    action = request.path_params["action"]
    if action not in ENTRY_ACTIONS:
        raise HTTPException(404)
    done = await perform(request, entry, action, f"portal:{viewer.address}")
    target = f"/quarantine/{entry.id}" if form.get("back") != "list" else "/quarantine"
    return redirect(request, target, done.text)


async def settings_page(request: Request, error: str = "", status: int = 200) -> Response:
    viewer = require_viewer(request)
    try:
        explained = await portal_of(request).users.explain(viewer.address)
    except UserSettingsUnavailable as exc:
        lang = language_of(request)
        return error_page(request, 503, t("settings.unavailable", lang), t("settings.cannot_read", lang, why=exc))
    return render(request, "settings.html", {"explained": explained, "prefs": explained.prefs, "error": error},
                  status=status)


async def save_settings(request: Request) -> Response:
    viewer = require_viewer(request)
    form = await posted_form(request)
    users = portal_of(request).users
    lang = language_of(request)
    try:
        current = await users.explain(viewer.address)
        changes = form_changes({k: str(v) for k, v in form.items() if isinstance(v, str)}, current, users.users)
        if not changes:
            return redirect(request, "/settings", t("settings.unchanged", lang))
        await change_settings(users, viewer.address, changes, f"portal:{viewer.address}")
    except SettingError as exc:
        return await settings_page(request, error=str(exc), status=400)
    except UserSettingsUnavailable as exc:
        return error_page(request, 503, t("settings.unavailable", lang), t("settings.cannot_change", lang, why=exc))
    keys = list(dict.fromkeys(c.key for c in changes))
    if "language" in keys:  # the saved language shows from now on, not the session's switch
        request.session.pop(SESSION_LANGUAGE, None)
        lang = next(c.value for c in changes if c.key == "language")
    names = ", ".join(t(f"setting.{k}", lang) for k in keys)
    return redirect(request, "/settings", t("settings.saved", lang, keys=names))
