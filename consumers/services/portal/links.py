"""``/l/<token>``: the digest's links. One entry, one action, no sign-in, and never on a GET.

A token (`pipeline.links`) names one entry and one action, signed with the site key. Following it:

- **GET** checks the token and shows what it would do, to which message (subject, sender,
  recipient), with one button. Mail scanners and link previews that fetch every URL of a mail
  therefore do nothing. A token that is malformed or forged is a 400 page, an expired one a 410
  page, each saying which; an entry that is gone (deleted, expired) a 410 page; an entry already
  released a 409 page "already released".
- **POST** (the button, with the CSRF token of the session the GET made) does it, as
  ``link:<recipient>``: release, release and learn as ham (a category that needs an admin becomes a
  release request), allow the sender, delete. A release token is single use: the entry is released
  once, and the same link again says "already released" and delivers nothing.
- ``open`` shows that one entry's preview and nothing else: a link is never a ticket to the whole
  quarantine, so the rest of it needs the user's own sign-in.
"""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from consumers.services.portal.core import portal_of, posted_form
from consumers.services.portal.acting import perform
from consumers.services.portal.preview import preview_of
from consumers.services.portal.views import render
from pipeline.links import LinkError, LinkToken, read_link_token
from pipeline.state.quarantine import Entry

__all__ = ["link_page", "link_action", "LINK_WORDS", "WHY"]

LINK_WORDS = {action: f"words.{action}" for action in ("release", "release_learn", "allow_sender", "delete", "open")}
WHY = {"malformed": 400, "forged": 400, "expired": 410, "gone": 410, "released": 409}  # why.<key> in `texts`


def _cannot(request: Request, why: str) -> Response:
    """The page that says why the link cannot be followed (``why.<why>`` and its title in `texts`)."""
    return render(request, "link_error.html", {"why": why}, status=WHY[why])


def _resolve(request: Request) -> tuple[LinkToken, Entry] | Response:
    """The token and its entry, or the page that says why the link cannot be followed."""
    portal = portal_of(request)
    try:
        token = read_link_token(portal.link_key, request.path_params["token"], now=portal.clock())
    except LinkError as exc:
        return _cannot(request, exc.why)
    entry = portal.state.entries.get(token.entry)
    if entry is None or entry.status in ("deleted", "expired"):
        return _cannot(request, "gone")
    if entry.status == "released" and token.action != "allow_sender":
        return _cannot(request, "released")
    return token, entry


async def link_page(request: Request) -> Response:
    found = _resolve(request)
    if isinstance(found, Response):
        return found
    token, entry = found
    portal = portal_of(request)
    context = {"entry": entry, "action": token.action, "words": LINK_WORDS[token.action],
               "token": request.path_params["token"]}
    if token.action == "open":
        context["preview"] = preview_of(portal.blobs, entry, portal.message_caps)
    elif token.action in ("release", "release_learn") and entry.needs_approval:
        context["words"] = "words.request"
    return render(request, "link.html", context)


async def link_action(request: Request) -> Response:
    await posted_form(request)
    found = _resolve(request)
    if isinstance(found, Response):
        return found
    token, entry = found
    if token.action == "open":
        return await link_page(request)
    done = await perform(request, entry, token.action, f"link:{entry.recipient}", token=token.id)
    status = 200 if done.ok else 409
    return render(request, "link_done.html", {"entry": entry, "done": done}, status=status)
