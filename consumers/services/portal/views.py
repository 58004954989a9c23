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


def render(request: Request, name: str, context: dict[str, Any] | None = None, status: int = 200) -> HTMLResponse:
    """The page `name` with the viewer, the CSRF token and the flash message of the session."""
    page = {"request": request, "viewer": viewer_of(request), "csrf": csrf_token(request),
            "flash": request.session.pop("flash", None), **(context or {})}
    return HTMLResponse(_ENV.get_template(name).render(page), status_code=status)


def redirect(request: Request, path: str, flash: str | None = None) -> RedirectResponse:
    """303 to `path` (after a POST: the browser GETs it), with a message for the next page."""
    if flash:
        request.session["flash"] = flash
    return RedirectResponse(path, status_code=303)


def error_page(request: Request, status: int, title: str, text: str) -> HTMLResponse:
    return render(request, "error.html", {"title": title, "text": text}, status=status)


_TITLES = {400: "Bad request", 403: "Not allowed", 404: "Not found", 405: "Method not allowed",
           413: "Too large", 429: "Too many attempts"}


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 303:  # require_viewer: sign in first
        return RedirectResponse(exc.headers["Location"], status_code=303)
    text = exc.detail if exc.status_code != 404 else "There is no such page, or it is not yours."
    return error_page(request, exc.status_code, _TITLES.get(exc.status_code, "Error"), str(text))


async def internal_error(request: Request, exc: Exception) -> Response:
    """Unexpected errors: a page without details (they are in the component's log)."""
    return HTMLResponse("<!doctype html><title>Error</title><h1>Something went wrong</h1>"
                        "<p>The portal could not answer this request; the details are in its log.</p>",
                        status_code=500)
