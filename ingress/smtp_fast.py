"""Per-connection and per-command costs of aiosmtpd 1.4 taken off the ingress's hot path, with the same results.

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
- Even with those, `SMTP.__init__` took 22 µs a connection in isolation and 60-80 µs under load
  (binding every `smtp_`, `handle_` and `auth_` method into fresh tables, formatting a log line
  that is not logged, and, without a `loop` argument, `asyncio.get_event_loop()` inside
  `warnings.catch_warnings()`). `fast_init` does the same work for aiosmtpd 1.4.6 and the arguments
  the ingress passes, with the tables from per-class and per-handler memory; for another aiosmtpd,
  or other arguments, it does nothing and aiosmtpd's own constructor runs. A unit test compares
  every attribute of a protocol object built either way.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import re
import ssl
import types
from functools import lru_cache
from typing import Any

import aiosmtpd
import aiosmtpd.smtp

__all__ = ["install_cached_introspection", "plain_angle_address", "fast_init"]

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


# ---- SMTP.__init__ from memory ----------------------------------------------------------------------

FAST_INIT_VERSION = "1.4.6"  # the aiosmtpd release whose `SMTP.__init__` `fast_init` reproduces
_FAST_INIT_ARGS = frozenset({"data_size_limit", "enable_SMTPUTF8", "decode_data", "hostname", "ident", "timeout",
                             "tls_context", "require_starttls", "auth_require_tls", "loop"})
_QUIET_TLS = (ssl.CERT_NONE, ssl.CERT_OPTIONAL)


def _mechanism(name: str, method: Any) -> str:
    return getattr(method, "__auth_mechanism_name__", name.replace("auth_", "").replace("__", "-"))


@lru_cache(maxsize=64)
def _class_tables(cls: type) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(auth mechanism -> function, command -> function) of a protocol class; None when one of
    them is not a plain function (binding it is then left to aiosmtpd)."""
    auth, commands = {}, {}
    for name in _class_names(cls):
        function = getattr(cls, name)
        if name.startswith("handle_"):
            continue
        if not isinstance(function, types.FunctionType):
            return None
        if name.startswith("auth_"):
            auth[_mechanism(name, function)] = function
        else:
            commands[name.replace("smtp_", "")] = function
    return auth, commands


@lru_cache(maxsize=16)
def _handler_tables(handler: Any) -> tuple[dict[str, Any], dict[str, Any], str] | None:
    """(auth mechanism -> aiosmtpd's entry, hook -> bound method, EHLO hook version) of a handler,
    which serves every connection of its listener (read at its first connection: a hook set on the
    handler later is not seen); None for what aiosmtpd warns or fails about."""
    hooks = {name.replace("handle_", ""): getattr(handler, name) for name in _dir(handler)
             if name.startswith("handle_")}
    auth = {_mechanism(name, method): aiosmtpd.smtp._AuthMechAttr(method, False)
            for name, method in _CachedInspect.getmembers(handler)}
    ehlo = hooks.get("EHLO")
    version = "none" if ehlo is None else {5: "new"}.get(len(_CachedInspect.signature(ehlo).parameters), "")
    return (auth, hooks, version) if version else None


def fast_init(smtp: aiosmtpd.smtp.SMTP, handler: Any, **kwargs: Any) -> bool:
    """Do what `SMTP.__init__(smtp, handler, **kwargs)` does in aiosmtpd 1.4.6; False, with nothing
    done, for another release, other arguments, or what aiosmtpd would warn about."""
    if aiosmtpd.__version__ != FAST_INIT_VERSION or not kwargs.keys() <= _FAST_INIT_ARGS or not kwargs.get("hostname"):
        return False
    tls_context = kwargs.get("tls_context")
    if tls_context and (tls_context.verify_mode not in _QUIET_TLS or tls_context.check_hostname):
        return False
    try:
        per_handler = _handler_tables(handler)
    except TypeError:  # an unhashable handler
        return False
    per_class = _class_tables(type(smtp))
    if per_handler is None or per_class is None:
        return False
    handler_auth, hooks, ehlo_version = per_handler
    own_auth, commands = per_class
    loop = kwargs.get("loop") or aiosmtpd.smtp.make_loop()
    asyncio.StreamReaderProtocol.__init__(smtp, asyncio.StreamReader(loop=loop, limit=smtp.line_length_limit),
                                          client_connected_cb=smtp._cb_client_connected, loop=loop)
    smtp.__ident__ = kwargs.get("ident") or aiosmtpd.smtp.__ident__
    smtp.loop = loop
    smtp.event_handler = handler
    smtp.data_size_limit = kwargs.get("data_size_limit", aiosmtpd.smtp.DATA_SIZE_DEFAULT)
    smtp.enable_SMTPUTF8 = kwargs.get("enable_SMTPUTF8", False)
    smtp._decode_data = kwargs.get("decode_data", False)
    smtp.command_size_limits.clear()
    smtp.hostname = kwargs["hostname"]
    smtp.tls_context = tls_context
    smtp.require_starttls = tls_context and kwargs.get("require_starttls", False)
    smtp._timeout_duration = kwargs.get("timeout", 300)
    smtp._timeout_handle = None
    smtp._tls_handshake_okay = True
    smtp._tls_protocol = None
    smtp._original_transport = None
    smtp.session = None
    smtp.envelope = None
    smtp.transport = None
    smtp._handler_coroutine = None
    smtp._auth_require_tls = kwargs.get("auth_require_tls", True)
    smtp._proxy_timeout = None
    smtp._auth_callback = aiosmtpd.smtp.login_always_fail
    smtp._authenticator = None
    smtp._auth_required = False
    smtp._auth_methods = {mechanism: aiosmtpd.smtp._AuthMechAttr(function.__get__(smtp), True)
                          for mechanism, function in own_auth.items()}
    smtp._auth_methods.update(handler_auth)
    if aiosmtpd.smtp.log.isEnabledFor(logging.INFO):
        aiosmtpd.smtp.log.info("Available AUTH mechanisms: " + " ".join(
            m + "(builtin)" if impl.is_builtin else m for m, impl in sorted(smtp._auth_methods.items())))
    smtp._handle_hooks = dict(hooks)
    smtp._ehlo_hook_ver = None if ehlo_version == "none" else ehlo_version
    smtp._smtp_methods = {command: function.__get__(smtp) for command, function in commands.items()}
    smtp._enforce_call_limit = False
    return True
