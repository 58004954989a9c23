"""The transport of destinations of kind ``mx``: straight to each recipient domain's mail servers.

A destination of kind mx (``[destinations.mx] kind = "mx"``) is the alternative to the smarthost for a
site that sends its own mail. The delivery logic (ledger, events, retries, DSNs, DKIM signing) is
`consumers.sinks.delivery.DeliverySink`, exactly as for the smarthost; only the transport differs:
`MxTransport` finds the next hop per recipient domain through `pipeline.clients.dns.Resolver` (the
resolver every other lookup uses) and talks SMTP to it with `consumers.sinks.transport.SmtpClientTransport`.

Finding the hosts (RFC 5321 5.1, RFC 7505), `mx_route`:
- the MX records, lowest preference first (equal preferences in random order), each host's A and
  then AAAA addresses (the destination's `ipv6`), at most its `max_addresses` addresses in all;
- no MX record (the name exists, NODATA): the domain's own A/AAAA records (the implicit MX);
- a null MX (`0 .`): the domain accepts no mail, a permanent 556 5.1.10: the sender gets a DSN;
- a domain that does not exist, or no address for any host: permanent (550 5.1.2 / 550 5.4.4);
- a DNS lookup that failed (timeout, SERVFAIL): temporary (451 4.4.3), retried like any 4xx;
- an address literal (`user@[192.0.2.1]`, which authenticated users may write to): that address.

Delivering: the addresses are tried in order; a connection that cannot be made (refused, timed
out, reset), and a server that greets with anything but 220 (4xx "too busy" or 5xx, as Postfix's
smtp_skip_4xx_greeting and smtp_skip_5xx_greeting), move on to the next one. The first SMTP server
that greets with 220 decides: its replies are the recipients' replies (4xx: deferred and retried,
5xx: bounced), as for the smarthost. No address reachable, or none that would talk, is a 4xx
(deferred), with what each host did in the reply.

Mail loops (Postfix's "loops back to myself"): an MX host whose address and port are where this
gateway's own MX listener takes mail (`own_listener`: `ingress.host` and `ingress.port`; with a
wildcard host, any address of this machine) ends the list: only the hosts before it, which the
domain prefers, are tried. When the gateway is the first, the recipients get ``554 5.4.6 mail for
<domain> loops back to myself`` (bounced, the sender gets a DSN): the DNS or the routing table sends
the domain's mail here, and it must be delivered locally instead.

TLS (the destination's `tls`, default "opportunistic"): "opportunistic" uses STARTTLS when offered and
accepts any certificate (RFC 7435: encryption against passive listeners; most MX certificates do not
name the MX host); a handshake that fails is tried again at once in plain text, as Postfix does (a
receiver with broken TLS would otherwise never get mail); "verify" requires STARTTLS and a certificate
naming the MX host (else the delivery is deferred); "none" never starts TLS. At most
`connections_per_domain` connections go to one recipient domain at a time, so a burst to one provider
does not look like an attack there.

The sink itself is the one every destination has (`consumers.sinks.destination`, which builds this
transport for the kind ``mx`` in its `TRANSPORTS` table and signs with DKIM).
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from itertools import groupby

from consumers.sinks.transport import (
    Delivery,
    DeliveryTransport,
    RefusedGreeting,
    SmtpClientTransport,
    client_ssl_context,
    tls_handshake_failed,
)
from pipeline.clients.dns import Answer, Resolver, is_null_mx, mx_hosts
from pipeline.destination_settings import DestinationSettings
from pipeline.settings import REPO_ROOT, ConfigError
from schemas.events import Reply

__all__ = ["MxTransport", "MxRoute", "mx_route", "is_own_listener"]

log = logging.getLogger(__name__)

NULL_MX = Reply(code=556, enhanced="5.1.10", text="recipient domain accepts no mail (null MX, RFC 7505)")
NO_DOMAIN = Reply(code=550, enhanced="5.1.2", text="recipient domain does not exist")
NO_HOST = Reply(code=550, enhanced="5.4.4", text="recipient domain has no mail host with an address")


def _loops_back(domain: str) -> Reply:
    return Reply(code=554, enhanced="5.4.6", text=f"mail for {domain} loops back to myself")


@lru_cache(maxsize=1024)
def _address_of_this_host(address: str) -> bool:
    """Whether `address` is one of this machine's (a socket can be bound to it)."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    except ValueError:
        return False
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:  # no IPv6 on this host: OSError too
            probe.bind((address, 0))
    except OSError:
        return False
    return True


def is_own_listener(address: str, port: int, own_listener: tuple[str, int] | None) -> bool:
    """Whether `address`:`port` reaches this gateway's MX listener (`own_listener`: its host and port)."""
    if own_listener is None or port != own_listener[1]:
        return False
    host = own_listener[0]
    if host in ("", "0.0.0.0", "::"):
        return _address_of_this_host(address)
    return address == host


def _dns_tempfail(answer: Answer) -> Reply:
    return Reply(code=451, enhanced="4.4.3", text=f"DNS lookup failed: {answer.describe()}")


@dataclass(frozen=True, slots=True)
class MxRoute:
    """Where a domain's mail goes: (host name, address) pairs to try in order, or the reply for all."""

    targets: tuple[tuple[str, str], ...] = ()
    failure: Reply | None = None


def _literal(domain: str) -> MxRoute | None:
    """An address literal ([192.0.2.1], [IPv6:2001:db8::1]) routes to itself; None for a name."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    text = domain[1:-1]
    text = text[5:] if text.lower().startswith("ipv6:") else text
    try:
        address = str(ipaddress.ip_address(text))
    except ValueError:
        return MxRoute(failure=Reply(code=550, enhanced="5.1.2", text=f"bad address literal {domain}"))
    return MxRoute(targets=((address, address),))


def _ordered(pairs: list[tuple[int, str]]) -> list[str]:
    """Host names by preference, equal preferences shuffled (RFC 5321 5.1: spread the load)."""
    hosts: list[str] = []
    for _, group in groupby(sorted(pairs), key=lambda pair: pair[0]):
        names = [name for _, name in group]
        random.shuffle(names)
        hosts += names
    return hosts


async def mx_route(resolver: Resolver, domain: str, *, ipv6: bool = True, max_addresses: int = 5) -> MxRoute:
    """The hosts to try for `domain` (see the module docstring), or the reply every recipient gets."""
    literal = _literal(domain)
    if literal is not None:
        return literal
    mx = await resolver.mx(domain)
    if mx.tempfail:
        return MxRoute(failure=_dns_tempfail(mx))
    if mx.status == "nxdomain":
        return MxRoute(failure=NO_DOMAIN)
    if is_null_mx(mx):
        return MxRoute(failure=NULL_MX)
    hosts = _ordered(mx_hosts(mx)) if mx.ok else [domain]  # nodata: the implicit MX
    targets: list[tuple[str, str]] = []
    trouble: Answer | None = None
    for host in hosts:
        if host == ".":  # a null MX among real ones is meaningless (RFC 7505 3): skip it
            continue
        for ask in (resolver.a, resolver.aaaa) if ipv6 else (resolver.a,):
            answer = await ask(host)
            if answer.tempfail:
                trouble = answer
            targets += [(host, address) for address in answer.records if answer.ok]
        if len(targets) >= max_addresses:
            break
    if targets:
        return MxRoute(targets=tuple(targets[:max_addresses]))
    return MxRoute(failure=_dns_tempfail(trouble) if trouble else NO_HOST)


class _DomainLimits:
    """At most `limit` concurrent uses per domain; a domain's semaphore lives while it is in use."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[str, tuple[asyncio.Semaphore, int]] = {}

    async def run(self, domain: str, work: Callable[[], object]):
        semaphore, users = self._held.get(domain, (asyncio.Semaphore(self.limit), 0))
        self._held[domain] = (semaphore, users + 1)
        try:
            async with semaphore:
                return await work()
        finally:
            semaphore, users = self._held[domain]
            if users == 1:
                del self._held[domain]
            else:
                self._held[domain] = (semaphore, users - 1)


# the SMTP client for one (host name, address, plain text?): tests swap it, as they swap a sink's transport
Connector = Callable[[str, str, bool], DeliveryTransport]


class MxTransport:
    """Delivers each recipient domain's share of a delivery to that domain's MX hosts."""

    def __init__(self, resolver: Resolver, settings: DestinationSettings, connect: Connector | None = None,
                 key: str = "destinations.mx", own_listener: tuple[str, int] | None = None) -> None:
        self.resolver = resolver
        self.settings = settings
        self.own_listener = own_listener  # (ingress.host, ingress.port): MX hosts there are this gateway
        self.tls = settings.tls or "opportunistic"  # none | opportunistic | verify
        self.connect = connect or self._smtp_client
        self.limits = _DomainLimits(settings.connections_per_domain)
        self._context = None
        if self.tls != "none":
            ca_file = settings.ca_file
            if ca_file and not ca_file.startswith("/"):
                ca_file = str(REPO_ROOT / ca_file)
            try:
                self._context = client_ssl_context(self.tls == "verify", ca_file)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{key}.ca_file: {exc}") from None

    def _smtp_client(self, host: str, address: str, plain: bool = False) -> DeliveryTransport:
        s = self.settings
        tls = "none" if plain else {"none": "none", "opportunistic": "opportunistic", "verify": "required"}[self.tls]
        return SmtpClientTransport(address, s.port, lmtp=False, helo_name=s.helo_name, timeout=s.timeout, tls=tls,
                                   ssl_context=self._context, server_name=host, peer=f"MX host {host}",
                                   skip_refusing_greeting=True)

    async def deliver(self, delivery: Delivery) -> dict[str, Reply]:
        by_domain: dict[str, list[str]] = {}
        for rcpt in delivery.recipients:
            by_domain.setdefault(rcpt.rpartition("@")[2].lower(), []).append(rcpt)
        shares = [Delivery(mail_from=delivery.mail_from, recipients=rcpts, data=delivery.data,
                           smtputf8=delivery.smtputf8, body_8bit=delivery.body_8bit) for rcpts in by_domain.values()]
        results = await asyncio.gather(*(self.limits.run(domain, lambda d=domain, s=share: self._to_domain(d, s))
                                         for domain, share in zip(by_domain, shares)))
        return {rcpt: reply for replies in results for rcpt, reply in replies.items()}

    async def _to_domain(self, domain: str, delivery: Delivery) -> dict[str, Reply]:
        s = self.settings
        route = await mx_route(self.resolver, domain, ipv6=s.ipv6, max_addresses=s.max_addresses)
        if route.failure is not None:
            log.info("mx %s: %s %s %s", domain, route.failure.code, route.failure.enhanced, route.failure.text)
            return dict.fromkeys(delivery.recipients, route.failure)
        targets = list(route.targets)
        ours = next((i for i, (_, address) in enumerate(targets)
                     if is_own_listener(address, s.port, self.own_listener)), None)
        if ours is not None:  # only the hosts the domain prefers to this gateway
            log.warning("mx %s: %s[%s] is this gateway; %d more preferred host(s) to try", domain,
                        targets[ours][0], targets[ours][1], ours)
            targets = targets[:ours]
            if not targets:
                return dict.fromkeys(delivery.recipients, _loops_back(domain))
        tried: list[str] = []
        for host, address in targets:
            try:
                replies = await self.connect(host, address, False).deliver(delivery)
                if self.tls == "opportunistic" and tls_handshake_failed(replies):
                    log.info("mx %s: TLS with %s[%s] failed, again in plain text", domain, host, address)
                    replies = await self.connect(host, address, True).deliver(delivery)
                return replies
            except RefusedGreeting as refused:
                log.info("mx %s: %s[%s] greeted %s, trying the next host", domain, host, address, refused)
                tried.append(f"{host}[{address}] greeted {refused}")
            except (OSError, asyncio.TimeoutError) as exc:
                log.info("mx %s: %s[%s] unreachable: %s", domain, host, address, exc or type(exc).__name__)
                tried.append(f"{host}[{address}] unreachable")
        return dict.fromkeys(delivery.recipients, Reply(code=451, enhanced="4.4.1",
                                                        text=f"no MX host of {domain} took it: {', '.join(tried)}"))
