"""pipeline.dns.Resolver against the real NSD of deploy/local/dns (and swapped transports for the
answers NSD does not give: SERVFAIL, lost datagrams, network errors)."""
from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import dns.message
import dns.rcode
import pytest

from pipeline.clients.dns import (
    BadName,
    Resolver,
    UdpTcpTransport,
    dnsbl_name,
    is_null_mx,
    mx_hosts,
    normalize_ip,
    rhsbl_name,
)
from pipeline.settings import DnsSettings
from tests.servers import NSD_HOST, NSD_INSTALLED, start_nsd

# --- statuses against NSD ------------------------------------------------------------------------


@pytest.mark.parametrize(("rdtype", "name", "status", "records"), [
    ("A", "mx.good.test", "ok", ("127.0.2.10",)),
    ("A", "MX.Good.Test.", "ok", ("127.0.2.10",)),  # case and the final dot do not matter
    ("AAAA", "aaaaonly.test", "ok", ("2001:db8::25",)),
    ("MX", "good.test", "ok", ("10 mx.good.test",)),
    ("MX", "nullmx.test", "ok", ("0 .",)),
    ("MX", "mailonly.test", "nodata", ()),  # the name exists, without MX
    ("A", "noaddress.test", "nodata", ()),
    ("MX", "nonexistent.test", "nxdomain", ()),
    ("A", "mx.dangling.test", "nxdomain", ()),
    ("A", "alias.good.test", "ok", ("127.0.2.10",)),  # CNAME followed
    ("TXT", "good.test", "ok", ("v=spf1 ip4:127.0.2.10 -all",)),
    ("A", "example.org", "tempfail", ()),  # NSD answers REFUSED outside its zones
])
async def test_lookup_statuses(resolver: Resolver, rdtype: str, name: str, status: str, records: tuple) -> None:
    answer = await resolver.query(name, rdtype)
    assert (answer.status, answer.records) == (status, records)
    if status == "tempfail":
        assert answer.error == "rcode REFUSED"
    else:
        assert answer.ttl == 60  # the record TTL, or the SOA minimum for negative answers


async def test_typed_methods(resolver: Resolver) -> None:
    assert (await resolver.a("mx.ext.test")).records == ("127.0.2.20",)
    assert (await resolver.aaaa("mx.ext.test")).status == "nodata"
    assert (await resolver.ptr("127.0.2.10")).records == ("mx.good.test",)
    assert sorted((await resolver.ptr("127.0.2.14")).records) == ["mx.dangling.test", "mx2.good.test"]
    assert (await resolver.ptr("127.0.2.12")).status == "nxdomain"
    assert (await resolver.ptr("::ffff:127.0.2.10")).records == ("mx.good.test",)  # v4-mapped is IPv4
    assert sorted((await resolver.dnsbl("127.0.1.67", "zen.dnsbl.test")).records) == ["127.0.0.10", "127.0.0.11"]
    assert (await resolver.dnsbl("127.0.1.68", "zen.dnsbl.test")).status == "nxdomain"
    assert (await resolver.dnsbl("2001:db8::66", "zen.dnsbl.test")).records == ("127.0.0.2",)
    assert (await resolver.rhsbl("phish.test", "dbl.rhsbl.test")).records == ("127.0.1.4",)
    assert (await resolver.rhsbl("good.test", "dbl.rhsbl.test")).status == "nxdomain"


async def test_txt_strings_of_one_record_are_joined(resolver: Resolver) -> None:
    (record,) = (await resolver.txt("sel._domainkey.good.test")).records
    # the zone writes the key as two character-strings; a DKIM verifier needs them as one
    assert record.startswith("v=DKIM1; k=rsa; p=MIIBIjAN") and record.endswith("IDAQAB")
    assert "\"" not in record and " " not in record.split("p=")[1]


async def test_null_mx(resolver: Resolver) -> None:
    assert is_null_mx(await resolver.mx("nullmx.test"))
    good = await resolver.mx("good.test")
    assert not is_null_mx(good)
    assert mx_hosts(good) == [(10, "mx.good.test")]
    assert not is_null_mx(await resolver.mx("mailonly.test"))


def test_from_settings() -> None:
    resolver = Resolver.from_settings(DnsSettings(nameserver="192.0.2.53", port=5300, timeout=1.5))
    assert (resolver.nameserver, resolver.port, resolver.timeout) == ("192.0.2.53", 5300, 1.5)
    assert (resolver.tries, resolver.cache.size, resolver.cache.max_ttl) == (2, 10_000, 300.0)
    # cache keys [dns] may grow later are passed on
    more = SimpleNamespace(nameserver="192.0.2.53", port=53, timeout=2.0, tries=3, cache_size=0,
                           cache_max_ttl=30.0, cache_negative_max_ttl=10.0, cache_tempfail_ttl=0.5)
    resolver = Resolver.from_settings(more)
    cache = resolver.cache
    assert (resolver.tries, cache.size, cache.max_ttl, cache.negative_max_ttl, cache.tempfail_ttl) == (
        3, 0, 30.0, 10.0, 0.5)


# --- names ---------------------------------------------------------------------------------------


def test_query_names() -> None:
    assert dnsbl_name("127.0.1.66", "zen.dnsbl.test") == "66.1.0.127.zen.dnsbl.test"
    assert dnsbl_name("::ffff:127.0.1.66", "zen.dnsbl.test") == "66.1.0.127.zen.dnsbl.test"
    assert dnsbl_name("2001:db8::66", "zen.dnsbl.test") == (
        "6.6.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.zen.dnsbl.test")
    assert rhsbl_name("Spammer.Test.", "dbl.rhsbl.test") == "spammer.test.dbl.rhsbl.test"
    assert str(normalize_ip(" ::ffff:192.0.2.1 ")) == "192.0.2.1"
    with pytest.raises(ValueError):
        dnsbl_name("not-an-ip", "zen.dnsbl.test")
    with pytest.raises(BadName):
        rhsbl_name("a" * 64 + ".test", "dbl.rhsbl.test")  # a label over 63 octets
    with pytest.raises(BadName):
        rhsbl_name(".".join(["a" * 60] * 4), "dbl.rhsbl.test")  # over 255 octets with the zone


@pytest.mark.parametrize("name", ["", ".", "a..test", "x" * 64])
async def test_bad_names_raise_before_asking(name: str) -> None:
    resolver = Resolver(NSD_HOST, 9, transport=_never_called)
    with pytest.raises(BadName):
        await resolver.a(name)


async def _never_called(request: dns.message.Message, timeout: float) -> dns.message.Message:
    raise AssertionError("the resolver asked about a name that is not a DNS name")


# --- failures ------------------------------------------------------------------------------------


async def test_nothing_listening_is_a_tempfail_within_the_timeout(dead_resolver: Resolver) -> None:
    started = time.monotonic()
    answer = await dead_resolver.a("mx.good.test")
    took = time.monotonic() - started
    assert answer.status == "tempfail" and "no answer" in answer.error
    assert dead_resolver.timeout * 0.9 <= took < dead_resolver.timeout + 0.5


@pytest.mark.nsd
@pytest.mark.skipif(not NSD_INSTALLED, reason="nsd not installed")
async def test_stopped_nsd_is_a_tempfail() -> None:
    home = Path(tempfile.mkdtemp(prefix="pst-checks-nsd-stop-"))
    server = start_nsd(home)
    try:
        resolver = server.resolver(timeout=0.4, cache_size=0)
        assert (await resolver.a("mx.good.test")).ok
        server.stop()
        answer = await resolver.a("mx.good.test")
        assert answer.status == "tempfail"
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


def _reply_with(rcode: int):
    async def transport(request: dns.message.Message, timeout: float) -> dns.message.Message:
        response = dns.message.make_response(request)
        response.set_rcode(rcode)
        return response
    return transport


@pytest.mark.parametrize("rcode", [dns.rcode.SERVFAIL, dns.rcode.REFUSED, dns.rcode.FORMERR, dns.rcode.NOTIMP])
async def test_server_errors_are_tempfails(rcode: int) -> None:
    answer = await Resolver(NSD_HOST, 53, transport=_reply_with(rcode)).a("mx.good.test")
    assert answer.status == "tempfail"
    assert answer.error == f"rcode {dns.rcode.to_text(rcode)}"


async def test_network_errors_are_tempfails_without_retry() -> None:
    calls = 0

    async def unreachable(request: dns.message.Message, timeout: float) -> dns.message.Message:
        nonlocal calls
        calls += 1
        raise OSError(101, "Network is unreachable")

    answer = await Resolver(NSD_HOST, 53, transport=unreachable).mx("good.test")
    assert answer.status == "tempfail" and "unreachable" in answer.error
    assert calls == 1


class DropFirst:
    """Loses the first `drop` requests (never answers them), forwards the rest to NSD."""

    def __init__(self, port: int, drop: int) -> None:
        self.forward = UdpTcpTransport(NSD_HOST, port)
        self.drop = drop
        self.calls = 0

    async def __call__(self, request: dns.message.Message, timeout: float) -> dns.message.Message:
        self.calls += 1
        if self.calls <= self.drop:
            await asyncio.sleep(3600)  # the resolver's own timeout must end this
        return await self.forward(request, timeout)


async def test_a_lost_datagram_is_asked_again(nsd) -> None:
    transport = DropFirst(nsd.port, drop=1)
    resolver = Resolver(NSD_HOST, nsd.port, timeout=0.6, transport=transport)
    answer = await resolver.a("mx.good.test")
    assert answer.records == ("127.0.2.10",) and transport.calls == 2

    transport = DropFirst(nsd.port, drop=2)
    started = time.monotonic()
    answer = await Resolver(NSD_HOST, nsd.port, timeout=0.6, transport=transport).a("mx.good.test")
    assert answer.status == "tempfail" and transport.calls == 2
    assert time.monotonic() - started < 1.0  # both tries within the one timeout


# --- the cache -----------------------------------------------------------------------------------


class Counting:
    def __init__(self, port: int) -> None:
        self.forward = UdpTcpTransport(NSD_HOST, port)
        self.asked: list[str] = []

    async def __call__(self, request: dns.message.Message, timeout: float) -> dns.message.Message:
        self.asked.append(request.question[0].name.to_text())
        return await self.forward(request, timeout)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_cache_honours_ttl_capped(nsd) -> None:
    transport, clock = Counting(nsd.port), Clock()
    resolver = Resolver(NSD_HOST, nsd.port, transport=transport, clock=clock,
                        cache_max_ttl=30, cache_negative_max_ttl=5)
    for _ in range(3):
        assert (await resolver.a("mx.good.test")).ok
        assert (await resolver.a("nonexistent.test")).status == "nxdomain"
    assert len(transport.asked) == 2
    clock.now += 6  # past the negative cap (the SOA says 60)
    await resolver.a("mx.good.test")
    await resolver.a("nonexistent.test")
    assert transport.asked[2:] == ["nonexistent.test."]
    clock.now += 25  # past the positive cap of 30 (the record says 60)
    await resolver.a("mx.good.test")
    assert transport.asked[3:] == ["mx.good.test."]
    await resolver.close()
    await resolver.a("mx.good.test")
    assert len(transport.asked) == 5


async def test_a_server_failure_is_cached_briefly() -> None:
    calls, clock = 0, Clock()

    async def servfail(request: dns.message.Message, timeout: float) -> dns.message.Message:
        nonlocal calls
        calls += 1
        return await _reply_with(dns.rcode.SERVFAIL)(request, timeout)

    resolver = Resolver(NSD_HOST, 53, transport=servfail, clock=clock)
    assert (await resolver.a("mx.good.test")).tempfail
    clock.now += 0.9
    assert (await resolver.a("mx.good.test")).tempfail
    assert calls == 1  # within the default second: not asked again
    clock.now += 0.2
    assert (await resolver.a("mx.good.test")).tempfail
    assert calls == 2

    calls = 0
    never = Resolver(NSD_HOST, 53, transport=servfail, clock=clock, cache_tempfail_ttl=0)
    assert (await never.a("mx.good.test")).tempfail and (await never.a("mx.good.test")).tempfail
    assert calls == 2


async def test_timeouts_and_network_errors_are_not_cached(nsd) -> None:
    transport = DropFirst(nsd.port, drop=2)
    resolver = Resolver(NSD_HOST, nsd.port, timeout=0.4, transport=transport)
    assert (await resolver.a("mx.good.test")).tempfail  # both tries lost
    assert (await resolver.a("mx.good.test")).records == ("127.0.2.10",)  # asked again at once
    assert transport.calls == 3

    calls = 0

    async def unreachable(request: dns.message.Message, timeout: float) -> dns.message.Message:
        nonlocal calls
        calls += 1
        raise OSError(101, "Network is unreachable")

    resolver = Resolver(NSD_HOST, 53, transport=unreachable)
    assert (await resolver.a("mx.good.test")).tempfail and (await resolver.a("mx.good.test")).tempfail
    assert calls == 2


async def test_cache_keeps_the_most_recently_used(nsd) -> None:
    transport = Counting(nsd.port)
    resolver = Resolver(NSD_HOST, nsd.port, transport=transport, cache_size=2)
    for name in ("mx.good.test", "mx.ext.test", "mx.good.test", "mx.spammer.test", "mx.good.test", "mx.ext.test"):
        await resolver.a(name)
    # mx.ext.test was the least recently used when mx.spammer.test came in
    assert transport.asked == ["mx.good.test.", "mx.ext.test.", "mx.spammer.test.", "mx.ext.test."]
    assert len(resolver.cache) == 2
