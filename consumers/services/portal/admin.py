"""The admin view (members of `[web] admin_group`): every entry, release requests, bulk actions, size.

Admins act as ``admin:<address>``; their release is an approval where the category needs one
(`QuarantineActions.approve`), a plain release otherwise. For everyone else these routes are 404s,
like an entry that is not theirs.
"""
from __future__ import annotations

from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from consumers.services.portal.core import any_entry, portal_of, posted_form, require_admin
from consumers.services.portal.acting import Done, perform
from consumers.services.portal.pages import STATUSES
from consumers.services.portal.history import timeline_of
from consumers.services.portal.preview import preview_of
from consumers.services.portal.texts import language_of, t
from consumers.services.portal.views import redirect, render
from pipeline.quarantine_settings import CATEGORIES
from pipeline.state.quarantine import Entry, QuarantineState

__all__ = ["QuarantineSize", "quarantine_size", "admin_page", "admin_entry", "admin_action", "bulk_action"]

MAX_LISTED = 500  # rows of a search shown at once
ADMIN_ACTIONS = ("approve", "deny", "release", "delete")


@dataclass(frozen=True, slots=True)
class QuarantineSize:
    entries: int  # open entries (held or requested)
    messages: int  # distinct stored messages behind them
    bytes: int  # their stored size (each message once)
    oldest: str  # time of the oldest open entry ("" when none)
    requested: int


def quarantine_size(state: QuarantineState) -> QuarantineSize:
    open_entries = [e for e in state.entries.values() if e.open]
    messages = {e.event.id: e.size for e in open_entries}
    return QuarantineSize(entries=len(open_entries), messages=len(messages), bytes=sum(messages.values()),
                          oldest=min((e.time for e in open_entries), default=""),
                          requested=sum(e.status == "requested" for e in open_entries))


def _search(request: Request, state: QuarantineState) -> tuple[dict[str, str], list[Entry]]:
    q = request.query_params
    filters = {"recipient": q.get("recipient", "").strip()[:200], "category": q.get("category", ""),
               "status": q.get("status", "open"), "q": q.get("q", "").strip()[:200]}
    if filters["category"] not in CATEGORIES:
        filters["category"] = ""
    if filters["status"] not in STATUSES:
        filters["status"] = "open"
    found = state.search(recipient=filters["recipient"] or None, category=filters["category"] or None,
                         status=None if filters["status"] == "all" else filters["status"], text=filters["q"] or None)
    return filters, found


async def admin_page(request: Request) -> Response:
    require_admin(request)
    state = portal_of(request).state
    filters, found = _search(request, state)
    requests = sorted((e for e in state.entries.values() if e.status == "requested"), key=lambda e: e.time)
    return render(request, "admin.html", {"size": quarantine_size(state), "filters": filters,
                                          "entries": found[:MAX_LISTED], "found": len(found), "requests": requests,
                                          "categories": CATEGORIES, "statuses": STATUSES})


async def admin_entry(request: Request) -> Response:
    viewer = require_admin(request)
    portal = portal_of(request)
    entry = any_entry(request, request.path_params["entry"])
    timeline, note = await timeline_of(portal.events, entry, viewer.addresses, admin=True,
                                       lang=language_of(request))
    return render(request, "entry.html", {"entry": entry, "preview": preview_of(portal.blobs, entry, portal.message_caps),
                                          "timeline": timeline, "timeline_note": note, "admin_view": True})


async def _act(request: Request, entry: Entry, action: str, by: str) -> Done:
    if action == "release" and entry.needs_approval:
        action = "approve"  # an admin's release of such an entry is the approval
    return await perform(request, entry, action, by, admin=True)


async def admin_action(request: Request) -> Response:
    viewer = require_admin(request)
    await posted_form(request)
    action = request.path_params["action"]
    if action not in ADMIN_ACTIONS:
        raise HTTPException(404)
    entry = any_entry(request, request.path_params["entry"])
    done = await _act(request, entry, action, f"admin:{viewer.address}")
    return redirect(request, f"/admin/entry/{entry.id}", done.text)


async def bulk_action(request: Request) -> Response:
    viewer = require_admin(request)
    form = await posted_form(request)
    action = form.get("action")
    if action not in ("release", "delete"):
        raise HTTPException(400, "error.bulk_choice")
    state = portal_of(request).state
    ids = [i for i in dict.fromkeys(form.get("entries[]") or []) if i in state.entries]
    done, refused = 0, []
    for entry_id in ids:
        result = await _act(request, state.entries[entry_id], action, f"admin:{viewer.address}")
        if result.ok:
            done += 1
        else:
            refused.append(f"{entry_id}: {result.why}")
    lang = language_of(request)
    summary = t(f"admin.bulk_{'released' if action == 'release' else 'deleted'}", lang, done=done, total=len(ids))
    if refused:
        more = " ..." if len(refused) > 10 else ""
        summary += f" {t('admin.bulk_refused', lang)} " + "; ".join(refused[:10]) + more
    return redirect(request, "/admin", summary)
