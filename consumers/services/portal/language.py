"""Which language a request gets, and the switch on every page that changes it.

`ChooseLanguage` (ASGI middleware inside the session's) decides once per request, before any page
or error page is made, and leaves the answer where `texts.language_of` finds it:

1. the switch: ``POST /language`` (a plain form with the session's CSRF token: no script) puts the
   chosen language in the session, and it wins for the rest of the session (a sign-in keeps it);
2. the signed-in user's `language` setting (`pipeline.state.users`: their own, the directory's or
   the site's; the same one the digest is written in);
3. before sign-in (the login page, a digest link's pages), the browser's ``Accept-Language``;
4. the site's ``[users] language``.

Saving the language on the settings page ends the switch, so the saved setting is what shows.
"""
from __future__ import annotations

import logging
import re

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from consumers.services.portal.auth import viewer_of
from consumers.services.portal.core import posted_form
from consumers.services.portal.texts import TEXTS, choose_language
from consumers.services.portal.views import redirect
from pipeline.state.users import UserSettingsUnavailable

__all__ = ["ChooseLanguage", "switch_language", "SESSION_LANGUAGE"]

log = logging.getLogger(__name__)

SESSION_LANGUAGE = "lang"
_BACK = re.compile(r"/(?!/)[A-Za-z0-9/_\-.~]*(\?[A-Za-z0-9_\-.~=&%+@/]*)?")  # a path (and query) of this site


class ChooseLanguage:
    """ASGI middleware: the request's language in ``scope["state"]["lang"]`` (see the module's order)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith("/static/"):  # a style sheet has no words
            request = Request(scope)
            scope.setdefault("state", {})["lang"] = await _decide(request)
        await self.app(scope, receive, send)


async def _decide(request: Request) -> str:
    portal = request.app.state.portal
    viewer = viewer_of(request)
    own = None
    if viewer is not None:
        try:
            own = (await portal.users.prefs(viewer.address)).language
        except UserSettingsUnavailable as exc:  # the page still comes, in the browser's or the site's language
            log.info("portal: the language of %s is not known now (%s)", viewer.address, exc)
    return choose_language(request.session.get(SESSION_LANGUAGE), own, request.headers.get("accept-language", ""),
                           portal.users.users.language)


async def switch_language(request: Request) -> Response:
    """``POST /language``: lang=de|en, back=the page to return to. Only this session changes."""
    form = await posted_form(request)
    lang = form.get("lang")
    if lang in TEXTS:
        request.session[SESSION_LANGUAGE] = lang
    back = form.get("back")
    return redirect(request, back if isinstance(back, str) and _BACK.fullmatch(back) else "/")
