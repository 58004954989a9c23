"""Signed links of the quarantine digest: one entry, one action, until the entry expires.

A digest lists held mail with links to release, release and learn as ham, allow the sender, or
delete. Proxmox Mail Gateway signs a ticket that opens the user's *whole* quarantine for days; a
forwarded digest then hands the quarantine to whoever reads it. Here a token names exactly one
entry and one action, and nothing else: ``v1.<entry>.<action>.<expires>.<mac>``, where `mac` is
HMAC-SHA256 (site key) over the other fields, base64url. Release tokens are single use because a
released entry cannot be released again (the quarantine state says so); the token's `id` is
recorded with the action.

The key is `[quarantine] link_key_file`, or ``<home>/keys/quarantine-links.key``, made on first use
(32 random bytes, mode 0600). Replacing the key invalidates every link sent so far.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.settings import Settings

__all__ = ["LINK_ACTIONS", "LinkError", "LinkToken", "make_link_token", "read_link_token", "link_key", "link_key_path"]

LINK_ACTIONS = ("release", "release_learn", "allow_sender", "delete", "open")
VERSION = "v1"
_ENTRY = re.compile(r"[0-9a-f]{20}")
MAX_TOKEN = 200


class LinkError(ValueError):
    """A link token that must not be followed; `why` is "malformed", "forged" or "expired"."""

    def __init__(self, why: str, text: str) -> None:
        super().__init__(text)
        self.why = why


@dataclass(frozen=True, slots=True)
class LinkToken:
    entry: str
    action: str
    expires: float  # Unix seconds
    id: str  # stable short id of this token (recorded with the action it was used for)


def _mac(key: bytes, body: str) -> str:
    digest = hmac.new(key, body.encode("ascii"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def make_link_token(key: bytes, entry_id: str, action: str, expires: float) -> str:
    """A token for `action` on the entry `entry_id`, valid until `expires` (Unix seconds)."""
    if action not in LINK_ACTIONS:
        raise ValueError(f"unknown link action {action!r}")
    if not _ENTRY.fullmatch(entry_id):
        raise ValueError(f"not an entry id: {entry_id!r}")
    body = f"{VERSION}.{entry_id}.{action}.{int(expires)}"
    return f"{body}.{_mac(key, body)}"


def read_link_token(key: bytes, token: str, now: float | None = None) -> LinkToken:
    """The entry and action a token names; `LinkError` when it is malformed, forged or expired.

    The MAC is checked before the expiry, so an altered expiry is "forged", not "expired"."""
    fields = token.split(".") if len(token) <= MAX_TOKEN else []
    if len(fields) != 5 or fields[0] != VERSION or not _ENTRY.fullmatch(fields[1]) \
            or fields[2] not in LINK_ACTIONS or not fields[3].isdigit():
        raise LinkError("malformed", "this link is not a complete quarantine link")
    body = ".".join(fields[:4])
    if not hmac.compare_digest(_mac(key, body), fields[4]):
        raise LinkError("forged", "this link was not issued by this gateway, or it was altered")
    expires = float(fields[3])
    if expires <= (time.time() if now is None else now):
        raise LinkError("expired", "this link has expired: the message is no longer in the quarantine")
    token_id = hashlib.sha256(token.encode("ascii")).hexdigest()[:16]
    return LinkToken(entry=fields[1], action=fields[2], expires=expires, id=token_id)


def link_key_path(settings: Settings) -> Path:
    configured = settings.quarantine.link_key_file
    return Path(configured) if configured else settings.home / "keys" / "quarantine-links.key"


def link_key(settings: Settings) -> bytes:
    """The site's link key, made (32 random bytes, mode 0600) when the file does not exist yet."""
    path = link_key_path(settings)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(os.urandom(32))
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # atomic, and refused when another process was first: its key stays
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    key = path.read_bytes()
    if len(key) < 16:
        raise ValueError(f"{path}: a link key needs at least 16 bytes, found {len(key)}")
    return key
