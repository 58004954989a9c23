"""What keeps the portal safe to expose: headers, bounded bodies, CSRF tokens, a login rate limit.

- **Headers on every answer** (`SecurityHeaders`): a strict Content-Security-Policy (nothing but our
  own style sheet and images; no script at all, no framing, forms only to ourselves), ``nosniff``,
  no Referer (a digest link's token must not leak to another site), and ``no-store``: quarantine
  pages are private and must not stay in a shared cache.
- **Bounded requests** (`BodyLimit`): uvicorn has no body limit (docs/decisions/0002); a body over
  `MAX_BODY` is refused with 413 while it streams in, before a form parser sees it.
- **CSRF**: every session carries a random token (`csrf_token`), every form sends it back, and
  every POST is refused (403) unless it matches (`check_csrf`). The session cookie is SameSite=Lax
  as well, so a cross-site POST does not even carry it.
- **Login rate limit** (`LoginLimiter`): `login_attempts` wrong passwords within `login_window` for
  one login, or from one client address, and further attempts are refused (429) without asking the
  directory, until the oldest failure leaves the window.

The session cookie itself (signed, HttpOnly, Secure unless `web.secure_cookies` is off, SameSite=Lax,
`web.session_lifetime`) is Starlette's `SessionMiddleware`, keyed with `session_key`.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.failures import FailureWindow

__all__ = ["SecurityHeaders", "BodyLimit", "LoginLimiter", "csrf_token", "check_csrf", "client_address",
           "session_key", "CSP", "MAX_BODY"]

CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'")
MAX_BODY = 256 * 1024  # the admin's bulk form with a thousand checked entries is ~40 KiB
_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]
CSRF_FIELD = "csrf"


class SecurityHeaders:
    """ASGI middleware: the headers above on every HTTP response (errors included)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *(h for h in _HEADERS if h[0] not in names)]
            await send(message)

        await self.app(scope, receive, with_headers)


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is answered 413 (declared or streamed)."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            await _plain(send, 413 if declared.isdigit() else 400, b"request body too large or malformed")
            return
        received = 0

        async def counting() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise HTTPException(413, "error.too_large")
            return message

        await self.app(scope, counting, send)


async def _plain(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), *_HEADERS]})
    await send({"type": "http.response.body", "body": body})


def session_key(site_key: bytes) -> bytes:
    """The key the session cookies are signed with: derived from the site's link key, so every
    portal instance of a site has the same one and no second key file is needed."""
    return hmac.new(site_key, b"poststelle portal session cookie", hashlib.sha256).digest()


def csrf_token(request: Request) -> str:
    """This session's CSRF token (made when the session has none)."""
    token = request.session.get(CSRF_FIELD)
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        request.session[CSRF_FIELD] = token
    return token


def check_csrf(request: Request, form_value: object) -> None:
    """403 unless `form_value` (the form's csrf field) is this session's token."""
    expected = request.session.get(CSRF_FIELD)
    if not isinstance(expected, str) or not expected or not isinstance(form_value, str) \
            or not hmac.compare_digest(expected.encode(), form_value.encode()):
        raise HTTPException(403, "error.csrf")  # a key of the portal's texts: the error page says it


def client_address(request: Request) -> str:
    """Who is asking: the peer, or, when the peer is a proxy on loopback (the site's TLS proxy on
    this host), the last address of its X-Forwarded-For."""
    peer = request.client.host if request.client else ""
    try:
        loopback = ipaddress.ip_address(peer).is_loopback
    except ValueError:
        loopback = False
    forwarded = request.headers.get("x-forwarded-for", "")
    if loopback and forwarded:
        last = forwarded.split(",")[-1].strip()
        try:
            return str(ipaddress.ip_address(last))
        except ValueError:
            return peer
    return peer


class LoginLimiter:
    """Wrong passwords per login and per client address within a sliding window."""

    def __init__(self, attempts: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = FailureWindow(attempts, window, clock)

    def blocked(self, login: str, address: str) -> float:
        """0 when a sign-in may go ahead; else the seconds until it may."""
        return max(self.failures.retry_after(key) for key in _keys(login, address))

    def failed(self, login: str, address: str) -> None:
        for key in _keys(login, address):
            self.failures.record(key)

    def succeeded(self, login: str) -> None:
        """A right password clears that login's failures (not the address's)."""
        self.failures.clear(_keys(login, "")[0])


def _keys(login: str, address: str) -> list[str]:
    return [f"login:{login.strip().lower()}", f"address:{address}"]
