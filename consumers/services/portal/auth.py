"""Who is signed in: a directory bind (as submission AUTH does), and whether that person is an admin.

The password goes to the directory as an LDAP simple bind (`Directory.authenticate`) and nowhere
else: never compared, stored or logged here. An admin is a member (directly or through nested
groups) of `[web] admin_group`, a group's DN; membership is asked at sign-in, so a removal from
the group takes effect with the next session.

The session (a signed cookie, see `security`) holds a `Viewer`: the primary address, the addresses
whose entries are the person's own (their mailbox and aliases), and the admin flag.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from starlette.requests import Request

from pipeline.clients.directory import Account, Directory
from pipeline.settings import ConfigError

__all__ = ["Viewer", "Accounts", "DirectoryAccounts", "viewer_of", "sign_in", "sign_out"]

SESSION_USER = "user"


@dataclass(frozen=True, slots=True)
class Viewer:
    """The signed-in person."""

    address: str  # primary mail
    addresses: tuple[str, ...]  # primary mail and aliases: whose quarantine entries are theirs
    admin: bool = False
    login: str = ""


class Accounts(Protocol):
    """What the portal asks the directory (`DirectoryAccounts`; tests give their own)."""

    async def authenticate(self, login: str, password: str) -> Account | None: ...

    async def is_admin(self, account: Account) -> bool: ...


def _rdn_value(dn: str) -> tuple[str, str]:
    """("cn", "admins") of "cn=admins,ou=groups,..." (attribute lower case)."""
    first = dn.split(",", 1)[0]
    name, _, value = first.partition("=")
    return name.strip().lower(), value.strip().lower()


class DirectoryAccounts:
    """`Accounts` on the site's directory. `admin_group` is a DN; "" means nobody is an admin.

    `Directory.member_of` names groups by their `cn` and `mail`; the group of the DN is matched by its
    `cn` (the first RDN), so the admin group's cn must not be shared by another group."""

    def __init__(self, directory: Directory, admin_group: str) -> None:
        self.directory = directory
        attribute, value = _rdn_value(admin_group) if admin_group else ("", "")
        if admin_group and (attribute != "cn" or not value):
            raise ConfigError(f"web.admin_group: expected the DN of a group (cn=...,...), got {admin_group!r}")
        self._admin_cn = value

    async def authenticate(self, login: str, password: str) -> Account | None:
        return await self.directory.authenticate(login, password)

    async def is_admin(self, account: Account) -> bool:
        if not self._admin_cn:
            return False
        return self._admin_cn in await self.directory.member_of(account.mail)


def viewer_of(request: Request) -> Viewer | None:
    """The signed-in person of this request's session, or None."""
    data = request.session.get(SESSION_USER)
    if not isinstance(data, dict) or not isinstance(data.get("address"), str):
        return None
    addresses = tuple(a for a in data.get("addresses", []) if isinstance(a, str))
    return Viewer(address=data["address"], addresses=addresses or (data["address"],),
                  admin=data.get("admin") is True, login=str(data.get("login", "")))


def sign_in(request: Request, account: Account, admin: bool, login: str) -> Viewer:
    """Start a session for `account` (a fresh one: nothing from before the sign-in carries over)."""
    request.session.clear()
    addresses = sorted({account.mail, *account.addresses} - {""})
    request.session[SESSION_USER] = {"address": account.mail, "addresses": addresses, "admin": admin,
                                     "login": login}
    return viewer_of(request)  # type: ignore[return-value]


def sign_out(request: Request) -> None:
    request.session.clear()
