"""Rendering: the Jinja2 templates (autoescaped), the context every page gets, and error pages.

Everything a template shows of a held message (subject, sender, text) is data, escaped by Jinja2's
autoescape; no template marks anything from a message as safe.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from consumers.services.portal.auth import viewer_of
from consumers.services.portal.security import csrf_token
from consumers.services.portal.texts import LANGUAGE_NAMES, TEXTS, language_of, t

__all__ = ["render", "redirect", "error_page", "http_error", "internal_error", "TEMPLATES"]

TEMPLATES = Path(__file__).with_name("templates")
_ENV = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True),
                   trim_blocks=True, lstrip_blocks=True)


def _when(iso: str) -> str:
    """An event time as people read it: '2026-12-03 10:15 UTC'."""
    try:
        return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return iso


def _moment(iso: str) -> str:
    """A step of a timeline, to the second: '2026-12-03 10:15:02'."""
    try:
        return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return iso


def _size(size: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024  # type: ignore[assignment]
    return str(size)


_ENV.filters["when"] = _when
_ENV.filters["size"] = _size
_ENV.filters["moment"] = _moment


def _back(request: Request) -> str:
    """Where the language switch returns to: this page (a GET's path and query; after a POST, the path)."""
    query = request.url.query if request.method == "GET" else ""
    return request.url.path + (f"?{query}" if query else "")


def render(request: Request, name: str, context: dict[str, Any] | None = None, status: int = 200) -> HTMLResponse:
    """The page `name` with the viewer, the CSRF token, the flash message of the session, and its
    language: `lang`, `t` (a key's text in it) and what the language switch needs."""
    lang = language_of(request)
    page = {"request": request, "viewer": viewer_of(request), "csrf": csrf_token(request),
            "flash": request.session.pop("flash", None), "lang": lang,
            "t": lambda key, **values: t(key, lang, **values), "languages": LANGUAGE_NAMES, "back": _back(request),
            **(context or {})}
    return HTMLResponse(_ENV.get_template(name).render(page), status_code=status)


def redirect(request: Request, path: str, flash: str | None = None) -> RedirectResponse:
    """303 to `path` (after a POST: the browser GETs it), with a message for the next page."""
    if flash:
        request.session["flash"] = flash
    return RedirectResponse(path, status_code=303)


def error_page(request: Request, status: int, title: str, text: str) -> HTMLResponse:
    return render(request, "error.html", {"title": title, "text": text}, status=status)


_TITLED = (400, 403, 404, 405, 413, 429, 503)  # statuses with a title of their own (error.<status>)


async def http_error(request: Request, exc: Exception) -> Response:
    """An HTTPException as a page in the request's language. Its detail is a catalogue key (``error.csrf``)
    where the portal raised it; Starlette's own (``Method Not Allowed``) gives way to the status's title."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 303:  # require_viewer: sign in first
        return RedirectResponse(exc.headers["Location"], status_code=303)
    lang = language_of(request)
    status = exc.status_code
    title = t(f"error.{status}" if status in _TITLED else "error.title", lang)
    detail = "error.not_found" if status == 404 else str(exc.detail)
    text = t(detail, lang) if detail in _KEYS else ("" if status in _TITLED else detail)
    return error_page(request, status, title, text)


_KEYS = frozenset(k for k in TEXTS["en"] if k.startswith("error."))


async def internal_error(request: Request, exc: Exception) -> Response:
    """Unexpected errors: a page without details (they are in the component's log). It is made outside
    the session and the language choice, so it says it in both languages."""
    return HTMLResponse("<!doctype html><html lang=\"de\"><title>Fehler / Error</title><h1>Etwas ging schief</h1>"
                        "<p>Das Portal konnte diese Anfrage nicht beantworten; die Einzelheiten stehen in seinem "
                        "Protokoll.</p><h1 lang=\"en\">Something went wrong</h1><p lang=\"en\">The portal could not "
                        "answer this request; the details are in its log.</p></html>", status_code=500)
