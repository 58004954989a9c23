"""What every page needs: the portal's parts (`Portal`), the signed-in viewer, and entries they may see.

Ownership is checked here, once, for every route that names an entry: an entry is the viewer's
when its recipient is one of their addresses (mailbox or alias). Anything else, including an id
that exists but belongs to someone else, is the same 404 as an id that does not exist, so guessing
ids tells nothing.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.exceptions import HTTPException
from starlette.requests import Request

from consumers.services.portal.auth import Accounts, Viewer, viewer_of
from consumers.services.portal.security import LoginLimiter, check_csrf
from pipeline.blobstore import BlobStore
from pipeline.quarantine_settings import QuarantineSettings, WebSettings
from pipeline.settings import MessageSettings, parse_duration
from pipeline.state.quarantine import Entry, QuarantineState
from pipeline.state.timeline_source import EventSource
from pipeline.state.users import UserSettings

__all__ = ["Portal", "StateView", "portal_of", "require_viewer", "require_admin", "own_entry", "any_entry",
           "posted_form", "MAX_FIELDS"]

MAX_FIELDS = 2000  # form fields (the admin's bulk form: one per checked entry)


class StateView(Protocol):
    """`pipeline.state.quarantine.QuarantineView`: a followed copy of the quarantine state."""

    state: QuarantineState

    @property
    def ready(self) -> bool: ...


@dataclass
class Portal:
    """The portal's parts, built by the component (`app.run_portal`) or a test."""

    web: WebSettings
    quarantine: QuarantineSettings
    view: StateView
    actions: Any  # pipeline.state.quarantine_actions.QuarantineActions
    accounts: Accounts
    users: UserSettings
    blobs: BlobStore
    link_key: bytes
    message_caps: MessageSettings = field(default_factory=MessageSettings)
    clock: Callable[[], float] = time.time
    limiter: LoginLimiter | None = None
    events: EventSource | None = None  # the event log for entry timelines (None: the quarantine's own record)

    def __post_init__(self) -> None:
        if self.limiter is None:
            window = parse_duration("web.login_window", self.web.login_window)
            self.limiter = LoginLimiter(self.web.login_attempts, window)

    @property
    def state(self) -> QuarantineState:
        if not self.view.ready:
            raise HTTPException(503, "error.starting")  # a catalogue key: the error page says it
        return self.view.state


def portal_of(request: Request) -> Portal:
    return request.app.state.portal


def require_viewer(request: Request) -> Viewer:
    """The signed-in person; not signed in: a 303 to the login page (raised as an exception)."""
    viewer = viewer_of(request)
    if viewer is None:
        raise HTTPException(303, "sign in first", headers={"Location": f"/login?next={request.url.path}"})
    return viewer


def require_admin(request: Request) -> Viewer:
    viewer = require_viewer(request)
    if not viewer.admin:
        raise HTTPException(404)
    return viewer


def own_entry(request: Request, viewer: Viewer, entry_id: str) -> Entry:
    """The entry `entry_id` when it is the viewer's; 404 otherwise (also for other people's)."""
    entry = portal_of(request).state.entries.get(entry_id)
    if entry is None or entry.recipient.lower() not in {a.lower() for a in viewer.addresses}:
        raise HTTPException(404)
    return entry


def any_entry(request: Request, entry_id: str) -> Entry:
    """For admins: any entry by id."""
    entry = portal_of(request).state.entries.get(entry_id)
    if entry is None:
        raise HTTPException(404)
    return entry


async def posted_form(request: Request) -> dict[str, Any]:
    """The POSTed form, CSRF-checked; list fields (checkboxes) as lists, the rest as strings."""
    form = await request.form(max_files=0, max_fields=MAX_FIELDS)
    check_csrf(request, form.get("csrf"))
    return {key: (form.getlist(key) if key.endswith("[]") else form.get(key)) for key in form.keys()}
