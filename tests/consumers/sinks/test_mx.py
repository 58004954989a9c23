"""The MX sink's transport: finding a domain's hosts in the real NSD zones (deploy/local/dns/test.zone),
falling back through them, null MX, DNS trouble, and the per-domain connection limit.

The SMTP client per (host, address) is swapped for a recording one (the way sink tests swap a sink's
transport); the SMTP client itself is tested in test_transport.py and test_smarthost.py."""
from __future__ import annotations

import asyncio

import pytest

from consumers.sinks.destination import destination_signer, destination_transport
from consumers.sinks.mx import NO_DOMAIN, NO_HOST, NULL_MX, MxTransport, is_own_listener, mx_route
from consumers.sinks.transport import Delivery, RefusedGreeting, SmtpClientTransport
from pipeline.cli.components import load_config
from pipeline.destination_settings import DestinationSettings
from pipeline.settings import REPO_ROOT, ConfigError
from schemas.events import Reply

MX = DestinationSettings(kind="mx")  # an mx destination with the defaults

OK = Reply(code=250, enhanced="2.0.0", text="queued")


class Hosts:
    """A connector whose hosts accept everything, except the addresses in `down` (connection refused)."""

    def __init__(self, down: tuple[str, ...] = (), pause: float = 0.0, broken_tls: tuple[str, ...] = (),
                 greeting: dict[str, Reply] | None = None) -> None:
        self.down, self.pause, self.broken_tls = down, pause, broken_tls
        self.greeting = greeting or {}  # address -> the greeting of a server that does not say 220
        self.tried: list[tuple[str, str]] = []
        self.plain: list[str] = []  # addresses connected to in plain text
        self.delivered: list[tuple[str, list[str]]] = []  # (address, recipients)
        self.open = self.most_open = 0

    def __call__(self, host: str, address: str, plain: bool = False):
        self.tried.append((host, address))
        if plain:
            self.plain.append(address)
        return _Client(self, address, plain)


class _Client:
    def __init__(self, hosts: Hosts, address: str, plain: bool) -> None:
        self.hosts, self.address, self.plain = hosts, address, plain

    async def deliver(self, delivery: Delivery) -> dict[str, Reply]:
        if self.address in self.hosts.down:
            raise ConnectionRefusedError(111, "Connection refused")
        if self.address in self.hosts.greeting:  # what SmtpClientTransport(skip_refusing_greeting=True) does
            raise RefusedGreeting(self.hosts.greeting[self.address])
        if self.address in self.hosts.broken_tls and not self.plain:  # what SmtpClientTransport answers
            return dict.fromkeys(delivery.recipients, Reply(code=454, enhanced="4.7.0",
                                                            text="TLS handshake with MX host x failed: bad record"))
        self.hosts.open += 1
        self.hosts.most_open = max(self.hosts.most_open, self.hosts.open)
        await asyncio.sleep(self.hosts.pause)
        self.hosts.open -= 1
        self.hosts.delivered.append((self.address, delivery.recipients))
        return dict.fromkeys(delivery.recipients, OK)


def _delivery(*recipients: str) -> Delivery:
    return Delivery(mail_from="anna.schmidt@school.test", recipients=list(recipients), data=b"Subject: x\r\n\r\nx\r\n")


async def test_mx_hosts_come_by_preference_with_their_addresses(resolver):
    route = await mx_route(resolver, "outside.test")
    assert route.failure is None
    assert route.targets == (("mx1.outside.test", "127.0.3.24"), ("mx2.outside.test", "127.0.3.25"))
    assert (await mx_route(resolver, "outside.test", max_addresses=1)).targets == (("mx1.outside.test", "127.0.3.24"),)


async def test_a_domain_without_mx_is_its_own_host(resolver):
    assert (await mx_route(resolver, "aonly.test")).targets == (("aonly.test", "127.0.3.26"),)
    assert (await mx_route(resolver, "aaaaonly.test")).targets == (("aaaaonly.test", "2001:db8::25"),)
    assert (await mx_route(resolver, "aaaaonly.test", ipv6=False)).failure == NO_HOST


async def test_null_mx_missing_domains_and_hostless_domains_fail_permanently(resolver):
    assert (await mx_route(resolver, "nullmx.test")).failure == NULL_MX
    assert NULL_MX.code == 556 and NULL_MX.enhanced == "5.1.10"  # RFC 7505 section 4.2
    assert (await mx_route(resolver, "nonexistent.test")).failure == NO_DOMAIN
    assert (await mx_route(resolver, "noaddress.test")).failure == NO_HOST  # exists, no MX, no A


async def test_dns_trouble_is_temporary(dead_resolver):
    failure = (await mx_route(dead_resolver, "outside.test")).failure
    assert failure is not None and failure.code == 451 and failure.enhanced == "4.4.3"


async def test_an_address_literal_is_its_own_host(resolver):
    assert (await mx_route(resolver, "[192.0.2.1]")).targets == (("192.0.2.1", "192.0.2.1"),)
    assert (await mx_route(resolver, "[IPv6:2001:db8::1]")).targets == (("2001:db8::1", "2001:db8::1"),)
    assert (await mx_route(resolver, "[not-an-address]")).failure.code == 550


async def test_an_unreachable_mx_falls_back_to_the_next(resolver):
    hosts = Hosts(down=("127.0.3.24",))
    replies = await MxTransport(resolver, MX, connect=hosts).deliver(_delivery("a@outside.test"))
    assert replies == {"a@outside.test": OK}
    assert hosts.tried == [("mx1.outside.test", "127.0.3.24"), ("mx2.outside.test", "127.0.3.25")]
    assert hosts.delivered == [("127.0.3.25", ["a@outside.test"])]


async def test_no_reachable_host_defers(resolver):
    hosts = Hosts(down=("127.0.3.24", "127.0.3.25"))
    reply = (await MxTransport(resolver, MX, connect=hosts).deliver(_delivery("a@outside.test")))[
        "a@outside.test"]
    assert (reply.code, reply.enhanced) == (451, "4.4.1")
    assert "mx1.outside.test[127.0.3.24]" in reply.text and "mx2.outside.test[127.0.3.25]" in reply.text


async def test_a_host_that_greets_with_4xx_or_5xx_is_passed_over_for_the_next(resolver):
    busy = Reply(code=421, enhanced="4.7.0", text="mx1.outside.test too busy, try later")
    hosts = Hosts(greeting={"127.0.3.24": busy})
    assert await MxTransport(resolver, MX, connect=hosts).deliver(_delivery("a@outside.test")) == {"a@outside.test": OK}
    assert hosts.tried == [("mx1.outside.test", "127.0.3.24"), ("mx2.outside.test", "127.0.3.25")]
    assert hosts.delivered == [("127.0.3.25", ["a@outside.test"])]
    # none that would talk: deferred (as Postfix does, a 5xx greeting too), saying what each host did
    hosts = Hosts(down=("127.0.3.25",), greeting={"127.0.3.24": Reply(code=554, enhanced="5.3.2", text="no mail")})
    reply = (await MxTransport(resolver, MX, connect=hosts).deliver(_delivery("a@outside.test")))["a@outside.test"]
    assert (reply.code, reply.enhanced) == (451, "4.4.1")
    assert reply.text == ("no MX host of outside.test took it: mx1.outside.test[127.0.3.24] greeted 554 5.3.2 no mail, "
                          "mx2.outside.test[127.0.3.25] unreachable")


async def test_an_mx_host_that_is_this_gateway_ends_the_list_and_alone_is_a_loop(resolver):
    # the gateway listens on every address of this machine (127.0.0.0/8 included) at the MX port
    hosts = Hosts()
    transport = MxTransport(resolver, MX, connect=hosts, own_listener=("0.0.0.0", MX.port))
    reply = (await transport.deliver(_delivery("a@outside.test")))["a@outside.test"]
    assert (reply.code, reply.enhanced, reply.text) == (554, "5.4.6", "mail for outside.test loops back to myself")
    assert hosts.tried == []
    # the gateway is the backup MX (mx2): only the preferred host is tried
    hosts = Hosts(down=("127.0.3.24",))
    transport = MxTransport(resolver, MX, connect=hosts, own_listener=("127.0.3.25", MX.port))
    reply = (await transport.deliver(_delivery("a@outside.test")))["a@outside.test"]
    assert (reply.code, reply.enhanced) == (451, "4.4.1") and hosts.tried == [("mx1.outside.test", "127.0.3.24")]
    # another port is another server, even on this machine (the local stack's test MX hosts)
    hosts = Hosts()
    transport = MxTransport(resolver, MX, connect=hosts, own_listener=("0.0.0.0", MX.port + 1))
    assert await transport.deliver(_delivery("a@outside.test")) == {"a@outside.test": OK}


def test_own_listener_means_its_port_and_its_address_or_any_of_this_host():
    assert is_own_listener("127.0.0.1", 25, ("0.0.0.0", 25))
    assert not is_own_listener("192.0.2.77", 25, ("0.0.0.0", 25))  # TEST-NET: not an address of this host
    assert not is_own_listener("2001:db8::25", 25, ("::", 25))  # nor this one (or no IPv6 here at all)
    assert not is_own_listener("127.0.0.1", 25, ("0.0.0.0", 2525)) and not is_own_listener("127.0.0.1", 25, None)
    assert is_own_listener("127.0.3.25", 25, ("127.0.3.25", 25)) and not is_own_listener("127.0.3.24", 25,
                                                                                          ("127.0.3.25", 25))


async def test_each_domain_gets_its_own_answer(resolver):
    hosts = Hosts()
    replies = await MxTransport(resolver, MX, connect=hosts).deliver(
        _delivery("a@outside.test", "b@nullmx.test", "c@aonly.test", "d@Outside.Test"))
    assert replies == {"a@outside.test": OK, "d@Outside.Test": OK, "b@nullmx.test": NULL_MX, "c@aonly.test": OK}
    assert sorted(hosts.delivered) == [("127.0.3.24", ["a@outside.test", "d@Outside.Test"]),
                                       ("127.0.3.26", ["c@aonly.test"])]


async def test_connections_to_one_domain_stay_within_the_limit(resolver):
    hosts = Hosts(pause=0.05)
    transport = MxTransport(resolver, DestinationSettings(kind="mx", connections_per_domain=2), connect=hosts)
    await asyncio.gather(*(transport.deliver(_delivery(f"r{i}@aonly.test")) for i in range(6)))
    assert len(hosts.delivered) == 6 and hosts.most_open == 2
    assert not transport.limits._held  # nothing kept for domains no longer in use


async def test_a_failed_opportunistic_handshake_is_tried_again_in_plain_text(resolver):
    hosts = Hosts(broken_tls=("127.0.3.26",))
    replies = await MxTransport(resolver, MX, connect=hosts).deliver(_delivery("a@aonly.test"))
    assert replies == {"a@aonly.test": OK} and hosts.plain == ["127.0.3.26"]
    hosts = Hosts(broken_tls=("127.0.3.26",))  # verified TLS is never given up for plain text
    reply = (await MxTransport(resolver, DestinationSettings(kind="mx", tls="verify"), connect=hosts).deliver(
        _delivery("a@aonly.test")))["a@aonly.test"]
    assert (reply.code, reply.enhanced) == (454, "4.7.0") and hosts.plain == []


def test_the_smtp_client_connects_to_the_address_and_checks_the_host_name(resolver):
    verify = MxTransport(resolver, DestinationSettings(kind="mx", tls="verify", port=2527))
    client = verify.connect("mx2.outside.test", "127.0.3.25")
    assert isinstance(client, SmtpClientTransport)
    assert (client.host, client.port, client.server_name, client.tls) == ("127.0.3.25", 2527, "mx2.outside.test",
                                                                          "required")
    assert client.ssl_context.check_hostname
    opportunistic = MxTransport(resolver, MX).connect("mx2.outside.test", "127.0.3.25")
    assert opportunistic.tls == "opportunistic" and not opportunistic.ssl_context.check_hostname
    assert MxTransport(resolver, DestinationSettings(kind="mx", tls="none")).connect("h", "127.0.0.1").tls == "none"


def test_mx_is_a_destination_kind_with_its_own_keys_checked():
    DestinationSettings(kind="mx", tls="verify", max_addresses=1, connections_per_domain=1).check("mx")
    for wrong, key in ((dict(tls="required"), "destinations.mx.tls"), (dict(max_addresses=0), "max_addresses"),
                       (dict(connections_per_domain=0), "connections_per_domain")):
        with pytest.raises(ConfigError, match=key):
            DestinationSettings(kind="mx", **wrong).check("mx")
    with pytest.raises(ConfigError, match="destinations.out.tls"):  # verify is a mode of kind mx only
        DestinationSettings(kind="smtp", tls="verify").check("out")


def test_the_local_mx_destination_gets_the_mx_transport_and_a_dkim_signer():
    settings = load_config(REPO_ROOT / "deploy/local/poststelle.toml", environ={})
    transport = destination_transport(settings, "mx")
    assert isinstance(transport, MxTransport) and transport.tls == "opportunistic"
    assert transport.settings.port == 2527 and transport.resolver.port == settings.dns.port
    assert isinstance(destination_transport(settings, "smarthost"), SmtpClientTransport)
    assert destination_signer(settings, "mx") is not None and destination_signer(settings, "smarthost") is not None
    assert destination_signer(settings, "lmtp") is None and destination_signer(settings, "store2") is None
