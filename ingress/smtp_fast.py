"""Two per-command costs of aiosmtpd 1.4 taken off the ingress's hot path, with the same results.

- Every connection builds its command tables in `SMTP.__init__` with `inspect.getmembers` and
  `dir()` over the protocol object and the handler, and `inspect.signature` of the EHLO hook
  (measured: 6 % of the ingress's CPU at 250 connections/s). `install_cached_introspection` gives
  the `aiosmtpd.smtp` module an `inspect` and a `dir` that remember, per class, which of the names
  aiosmtpd builds tables from exist (`handle_`, `smtp_`, `auth_`; it looks at no other), so the
  tables come out the same (a unit test compares them with the uncached ones).
- Every MAIL and RCPT parses the address with the email package's header parser, and aiosmtpd's
  `_getaddr` defines a `typing.Protocol` class on each call (5 %). `plain_angle_address` reads the
  common form `<local@domain>` (a dot-atom local part, a host name) with one regex; anything else
  (quoted local parts, address literals, comments, odd spacing, the null sender) still goes to
  aiosmtpd's parser. A unit test checks both agree on every form the fast path takes.
"""
from __future__ import annotations

import inspect
import re
from functools import lru_cache
from typing import Any

import aiosmtpd.smtp

__all__ = ["install_cached_introspection", "plain_angle_address"]

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PLAIN = re.compile(rf"<(({_ATOM}(?:\.{_ATOM})*)@{_LABEL}(?:\.{_LABEL})*)>")


def plain_angle_address(arg: str, local_part_limit: int) -> tuple[str, str] | None:
    """(address, rest) for `<dot-atom@host.name>rest`, as aiosmtpd's parser gives it; else None."""
    m = _PLAIN.match(arg)
    if m is None or (local_part_limit and len(m[2]) > local_part_limit):
        return None
    rest = arg[m.end():].lstrip(" \t")  # the parser takes the white space after ">" with the address
    if rest.startswith("("):  # ... and a comment, which is left to it
        return None
    return m[1], rest


# aiosmtpd calls `dir` only to collect these methods (`handle_` hooks, `smtp_` commands; `auth_` via
# getmembers): the other names of an object are never looked at, so they are left out
_TABLE_PREFIXES = ("handle_", "smtp_", "auth_")


def _own_table_names(own: dict[str, Any]) -> bool:
    """Whether an instance attribute has one of those prefixes (none of aiosmtpd's or ours has): three
    substring searches over the joined names instead of a `startswith` per attribute."""
    joined = "\0" + "\0".join(own)
    return "\0handle_" in joined or "\0smtp_" in joined or "\0auth_" in joined


@lru_cache(maxsize=64)
def _class_names(cls: type) -> tuple[str, ...]:
    return tuple(sorted(name for name in dir(cls) if name.startswith(_TABLE_PREFIXES)))


def _dir(obj: Any = None) -> list[str] | tuple[str, ...]:
    """The names of `dir(obj)` that aiosmtpd builds tables from (class and own attributes), sorted.
    (aiosmtpd only iterates over what `dir` gives it, so a per-class tuple serves.)"""
    own = getattr(obj, "__dict__", None)
    if own is None or type(obj).__dir__ is not object.__dir__:
        return [name for name in dir(obj) if name.startswith(_TABLE_PREFIXES)]
    names = _class_names(type(obj))
    if not _own_table_names(own):
        return names
    extra = [name for name in own if name.startswith(_TABLE_PREFIXES)]
    return sorted(set(names).union(extra))


class _CachedInspect:
    """The two functions of `inspect` that `aiosmtpd.smtp` calls, with per-class memory.

    aiosmtpd calls `getmembers` only to find the `auth_` methods: the other members are left out.
    """

    @staticmethod
    def getmembers(obj: Any) -> list[tuple[str, Any]]:
        members = []
        for name in _dir(obj):
            if not name.startswith("auth_"):
                continue
            try:
                members.append((name, getattr(obj, name)))
            except AttributeError:
                pass
        return members

    @staticmethod
    def signature(fn: Any) -> inspect.Signature:
        func = getattr(fn, "__func__", None)  # a bound method: its function's signature, cached
        return inspect.signature(fn) if func is None else _bound_signature(func)


@lru_cache(maxsize=64)
def _bound_signature(func: Any) -> inspect.Signature:
    """The signature of `func` bound to an instance (its first parameter dropped)."""
    sig = inspect.signature(func)
    return sig.replace(parameters=list(sig.parameters.values())[1:])


def install_cached_introspection() -> None:
    """Point `aiosmtpd.smtp` at the cached `inspect` and `dir` (idempotent)."""
    aiosmtpd.smtp.inspect = _CachedInspect  # type: ignore[attr-defined]
    aiosmtpd.smtp.dir = _dir  # type: ignore[attr-defined]
