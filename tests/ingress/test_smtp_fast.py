"""The ingress's shortcuts around aiosmtpd (ingress/smtp_fast.py) give aiosmtpd's own results."""
from __future__ import annotations

import asyncio
import collections
import inspect
import ssl
import types
import weakref

import aiosmtpd
import aiosmtpd.smtp
import pytest
from aiosmtpd.smtp import SMTP

from ingress.smtp import IngressSMTP
from ingress.smtp_fast import fast_init, plain_angle_address

TAKEN = [
    "<anna@school.test>", "<anna@school.test> SIZE=4096", "<a.b+c@Sub.School.test>  BODY=8BITMIME SMTPUTF8",
    "<x!#$%&'*+/=?^_`{|}~-y@a-b.c>", "<1@2>", "<anna@school.test>trailing",
    "<anna@school.test> \t SIZE=1 ", "<anna@school.test> ",
]
LEFT_TO_AIOSMTPD = [
    "<>", " <anna@school.test>", '<"a b"@school.test>', "<anna@[127.0.0.1]>", "<a..b@school.test>",
    "<.a@school.test>", "<a.@school.test>", "<anna@-school.test>", "<anna@school-.test>", "<anna@school..test>",
    "<anna(comment)@school.test>", "<@relay.test:anna@school.test>", "anna@school.test", "<anna@school.test",
    "<anna school.test>", "<anna@school.test> (comment) SIZE=1", "<ännä@school.test>", "<anna@schööl.test>", "<anna@school.test@other.test>",
]


class _Handler:
    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        return responses

    async def handle_DATA(self, server, session, envelope):
        return "250 OK"

    async def auth_CUSTOM(self, server, args):
        return None


def _aiosmtpd_getaddr(arg: str, limit: int = 0) -> tuple[str | None, str | None]:
    protocol = SMTP.__new__(SMTP)
    protocol.local_part_limit = limit
    return SMTP._getaddr(protocol, arg)


@pytest.mark.parametrize("arg", TAKEN)
def test_the_fast_path_reads_plain_addresses_as_aiosmtpd_does(arg: str) -> None:
    assert plain_angle_address(arg, 0) == _aiosmtpd_getaddr(arg)


@pytest.mark.parametrize("arg", LEFT_TO_AIOSMTPD)
def test_every_other_form_is_left_to_aiosmtpd(arg: str) -> None:
    assert plain_angle_address(arg, 0) is None


def test_the_local_part_limit_still_holds() -> None:
    assert plain_angle_address("<abcdefgh@school.test>", 8) is not None
    assert plain_angle_address("<abcdefghi@school.test>", 8) is None
    assert _aiosmtpd_getaddr("<abcdefghi@school.test>", 8) == (None, None)


async def test_the_command_tables_are_those_aiosmtpd_builds_with_inspect() -> None:
    handler = _Handler()
    protocol = IngressSMTP(handler)
    auth = {name.replace("auth_", "").replace("__", "-"): (method.__func__, obj is protocol)
            for obj in (protocol, handler) for name, method in inspect.getmembers(obj) if name.startswith("auth_")}
    assert {k: (v.method.__func__, v.is_builtin) for k, v in protocol._auth_methods.items()} == auth
    assert "CUSTOM" in auth and "PLAIN" in auth and "LOGIN" in auth
    assert protocol._handle_hooks == {n.replace("handle_", ""): getattr(handler, n)
                                      for n in dir(handler) if n.startswith("handle_")}
    assert protocol._smtp_methods == {n.replace("smtp_", ""): getattr(protocol, n)
                                      for n in dir(protocol) if n.startswith("smtp_")}
    assert protocol._ehlo_hook_ver == "new"
    second = IngressSMTP(handler)  # bound to its own instance, not to the first connection's
    assert second._smtp_methods["HELO"].__self__ is second and second._auth_methods["PLAIN"].method.__self__ is second


async def test_a_hook_set_on_the_handler_instance_is_found_as_aiosmtpd_would() -> None:
    handler = _Handler()

    async def handle_NOOP(server, session, envelope, arg):  # an attribute of this handler, not of its class
        return "250 OK own"

    handler.handle_NOOP = handle_NOOP
    handler.auth_OWN = lambda server, args: None
    protocol = IngressSMTP(handler)
    assert protocol._handle_hooks["NOOP"] is handle_NOOP
    assert protocol._handle_hooks == {n.replace("handle_", ""): getattr(handler, n)
                                      for n in dir(handler) if n.startswith("handle_")}
    assert "OWN" in protocol._auth_methods and "PLAIN" in protocol._auth_methods


# ---- the constructor from memory (fast_init) ---------------------------------------------------------


def _comparable(value, owner):
    """A value of a protocol object's attribute in a form that two equivalent objects share."""
    if isinstance(value, types.MethodType):
        return "method", value.__func__, "self" if value.__self__ is owner else value.__self__
    if isinstance(value, aiosmtpd.smtp._AuthMechAttr):
        return "auth", _comparable(value.method, owner), value.is_builtin
    if isinstance(value, dict):
        return {k: _comparable(v, owner) for k, v in value.items()}
    if isinstance(value, weakref.ref):
        return "weakref", _comparable(value(), owner)
    if isinstance(value, asyncio.StreamReader):
        return "reader", type(value), value._limit, value._loop
    if isinstance(value, asyncio.Future):
        return "future", value.done()
    if isinstance(value, collections.deque):
        return "deque", list(value)
    return value


def _built_by_aiosmtpd(handler, **kwargs) -> IngressSMTP:
    protocol = IngressSMTP.__new__(IngressSMTP)
    SMTP.__init__(protocol, handler, **kwargs)
    return protocol


@pytest.mark.parametrize("tls", [False, True])
async def test_the_constructor_from_memory_builds_what_aiosmtpds_builds(tls: bool) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH) if tls else None
    kwargs = dict(data_size_limit=4096, enable_SMTPUTF8=True, decode_data=False, hostname="mx.school.test",
                  ident="poststelle", timeout=30, tls_context=context, require_starttls=tls,
                  auth_require_tls=not tls, loop=asyncio.get_running_loop())
    handler = _Handler()
    ours = IngressSMTP.__new__(IngressSMTP)
    assert fast_init(ours, handler, **kwargs), "aiosmtpd is the release fast_init was written for"
    for _ in range(2):  # the first from fresh tables, the second from memory
        theirs = _built_by_aiosmtpd(handler, **kwargs)
        assert vars(ours).keys() == vars(theirs).keys()
        for name in vars(theirs):
            assert _comparable(getattr(ours, name), ours) == _comparable(getattr(theirs, name), theirs), name
        ours = IngressSMTP.__new__(IngressSMTP)
        fast_init(ours, handler, **kwargs)
    assert ours._smtp_methods["HELO"].__self__ is ours and ours._auth_methods["PLAIN"].method.__self__ is ours


async def test_the_constructor_from_memory_leaves_other_cases_to_aiosmtpd(monkeypatch) -> None:
    loop = asyncio.get_running_loop()
    assert not fast_init(IngressSMTP.__new__(IngressSMTP), _Handler(), loop=loop)  # no hostname: getfqdn()
    assert not fast_init(IngressSMTP.__new__(IngressSMTP), _Handler(), hostname="mx", auth_required=True)
    verifying = ssl.create_default_context()  # CERT_REQUIRED: aiosmtpd warns about it
    assert not fast_init(IngressSMTP.__new__(IngressSMTP), _Handler(), hostname="mx", tls_context=verifying)
    monkeypatch.setattr(aiosmtpd, "__version__", "1.5.0")  # an aiosmtpd it was not written for
    assert not fast_init(IngressSMTP.__new__(IngressSMTP), _Handler(), hostname="mx", loop=loop)
    protocol = IngressSMTP(_Handler(), hostname="mx", loop=loop)  # ... builds with aiosmtpd's constructor
    assert protocol._smtp_methods["HELO"].__self__ is protocol
