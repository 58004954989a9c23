"""The quarantine portal: the Starlette application and the `web` component that serves it.

`create_app(portal)` builds the application on a `core.Portal` (the quarantine view, the actions,
the directory, the user settings, the blob store, the link key); tests build one on in-memory
parts. `run_portal` is the component (`poststelle run web`, started by `poststelle up`): it follows
the quarantine topic and the user settings, and serves the application on `[web] host:port`
(loopback; a site's TLS proxy puts it online) through `pipeline.web.serving`, until `stop`.

Routes:

    GET  /login, POST /login, POST /logout
    GET  /quarantine                     my entries (filter: category, status, q; sort: date, score, sender)
    GET  /quarantine/<id>                one entry: safe preview, timeline, buttons
    POST /quarantine/<id>/<action>       release | release_learn | request | delete | allow_sender | block_sender
    GET  /settings, POST /settings       quarantine on/off, digest, allow and block lists
    GET  /admin                          admins: size and age, requests, search, bulk form
    GET  /admin/entry/<id>, POST /admin/entry/<id>/<action>   approve | deny | release | delete
    POST /admin/bulk                     release or delete the checked entries
    GET  /l/<token>, POST /l/<token>     a digest link: what it does, then do it
    POST /language                       the language switch of every page (lang=de|en, back=the page)
    GET  /static/portal.css
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from consumers.services.portal import admin, links, pages
from consumers.services.portal.auth import DirectoryAccounts
from consumers.services.portal.core import Portal
from consumers.services.portal.language import ChooseLanguage, switch_language
from consumers.services.portal.security import BodyLimit, SecurityHeaders, session_key
from consumers.services.portal.views import http_error, internal_error
from pipeline.blobstore import FileBlobStore
from pipeline.bus import ensure_topics
from pipeline.clients.directory import Directory
from pipeline.links import link_key
from pipeline.producers import TransactionalProducer
from pipeline.settings import Settings, parse_duration
from pipeline.state.quarantine import QuarantineView
from pipeline.state.quarantine_actions import HamLearner, QuarantineActions
from pipeline.state.timeline_source import AnalyticsSource
from pipeline.state.users import UserSettings
from pipeline.web import serving

__all__ = ["create_app", "run_portal", "SESSION_COOKIE"]

log = logging.getLogger(__name__)

SESSION_COOKIE = "poststelle_session"
STATIC = Path(__file__).with_name("static")
START_TIMEOUT = 30.0


def create_app(portal: Portal) -> Starlette:
    """The portal's ASGI application on `portal`'s parts."""
    entry = "{entry:str}"
    routes = [
        Route("/", pages.home),
        Route("/login", pages.login_page, methods=["GET"]),
        Route("/login", pages.login, methods=["POST"]),
        Route("/logout", pages.logout, methods=["POST"]),
        Route("/quarantine", pages.my_quarantine),
        Route(f"/quarantine/{entry}", pages.entry_page),
        Route(f"/quarantine/{entry}/{{action:str}}", pages.entry_action, methods=["POST"]),
        Route("/settings", pages.settings_page, methods=["GET"]),
        Route("/settings", pages.save_settings, methods=["POST"]),
        Route("/admin", admin.admin_page),
        Route("/admin/bulk", admin.bulk_action, methods=["POST"]),
        Route(f"/admin/entry/{entry}", admin.admin_entry),
        Route(f"/admin/entry/{entry}/{{action:str}}", admin.admin_action, methods=["POST"]),
        Route("/l/{token:str}", links.link_page, methods=["GET"]),
        Route("/l/{token:str}", links.link_action, methods=["POST"]),
        Route("/language", switch_language, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(BodyLimit),
        Middleware(SessionMiddleware, secret_key=session_key(portal.link_key).hex(), session_cookie=SESSION_COOKIE,
                   max_age=int(parse_duration("web.session_lifetime", portal.web.session_lifetime)),
                   same_site="lax", https_only=portal.web.secure_cookies),
        Middleware(ChooseLanguage),  # inside the session: the switch and the viewer are in it
    ]
    app = Starlette(routes=routes, middleware=middleware,
                    exception_handlers={HTTPException: http_error, Exception: internal_error})
    app.state.portal = portal
    return app


def _event_log(settings: Settings) -> AnalyticsSource | None:
    """Where entry timelines come from: the analytics store, when this site has one."""
    analytics = settings.sinks.analytics
    return AnalyticsSource.from_settings(settings) if analytics.url or "analytics" in settings.supervisor.sinks else None


async def run_portal(settings: Settings, stop: asyncio.Event, on_ready: Callable[[], None] | None = None,
                     instance: str = "0", *, learn_ham: HamLearner | None = None) -> None:
    """The `web` component: follow the quarantine and the user settings, serve the portal until `stop`.

    `learn_ham` (raw message → its ham `spam_learned` event) comes from the composition root, which
    may import the spam stage; this service may not."""
    client = f"web-{instance}"
    view = QuarantineView(settings, client)
    users = UserSettings.from_settings(settings, client_id=f"{client}-users")
    directory = Directory.from_settings(settings.ldap)
    blobs = FileBlobStore(settings.home / "blobs")
    producer = TransactionalProducer(settings.kafka, f"{settings.kafka.topic_prefix}-{client}")
    actions = QuarantineActions(settings, view, producer, blobs, users=users, learn_ham=learn_ham)
    try:
        await ensure_topics(settings, timeout=START_TIMEOUT)
        await view.start(START_TIMEOUT)
        await users.start(START_TIMEOUT)
        portal = Portal(web=settings.web, quarantine=settings.quarantine, view=view, actions=actions,
                        accounts=DirectoryAccounts(directory, settings.web.admin_group), users=users, blobs=blobs,
                        link_key=link_key(settings), message_caps=settings.message, events=_event_log(settings))
        async with serving(create_app(portal), settings.web.host, settings.web.port, name="portal"):
            if on_ready is not None:
                on_ready()
            await stop.wait()
    finally:
        await producer.stop()
        await users.close()
        await view.close()
        await directory.close()
