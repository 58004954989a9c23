"""Enough file descriptors for `ingress.max_connections` sessions, or a smaller limit that is honest.

Every SMTP session is a socket, and the process needs more besides: Kafka connections, DNS sockets
(one per lookup in flight), LDAP, blob files being written, logs. A process often starts with a soft
RLIMIT_NOFILE of 1024 (systemd's and a login shell's default) and a much higher hard limit, which an
unprivileged process may raise its soft limit to. Past the limit `accept()` fails with EMFILE and
asyncio stops accepting for a second at a time, so nobody gets even a `421`; counting sessions below
the descriptor limit keeps the answer a `421 4.7.0` (`ingress.limits`).

At start-up the ingress calls `connection_capacity`: it raises the soft limit to the hard limit
(what the sessions need, at least; a burst of new clients also means a burst of DNS sockets, so
headroom is cheap insurance), and returns how many sessions fit, logging what it got.
"""
from __future__ import annotations

import logging
import resource

__all__ = ["RESERVED_DESCRIPTORS", "connection_capacity", "raise_descriptor_limit"]

log = logging.getLogger(__name__)

# descriptors kept for everything but the sessions: Kafka, DNS lookups in flight (a few per new
# client at connect: 200 clients connecting at once took ~600), LDAP, blobs, logs
RESERVED_DESCRIPTORS = 1024


def raise_descriptor_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (to `wanted` when the hard limit is infinite;
    never lower it); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinite = hard == resource.RLIM_INFINITY
    target = wanted if infinite else hard
    if soft != resource.RLIM_INFINITY and target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the descriptor limit from %d to %d: %s", soft, target, exc)
            return soft
        log.info("descriptor limit (RLIMIT_NOFILE) raised from %d to %d (hard limit %s)", soft, target,
                 "unlimited" if infinite else hard)
        return target
    return soft


def connection_capacity(max_connections: int) -> int:
    """The sessions this process can hold: `max_connections`, or fewer when descriptors run short.

    Raises the soft descriptor limit first (`raise_descriptor_limit`); logs the outcome either way.
    """
    limit = raise_descriptor_limit(max_connections + RESERVED_DESCRIPTORS)
    if limit == resource.RLIM_INFINITY or limit - RESERVED_DESCRIPTORS >= max_connections:
        log.info("up to %d concurrent SMTP sessions (descriptor limit %s)", max_connections,
                 "unlimited" if limit == resource.RLIM_INFINITY else limit)
        return max_connections
    capacity = max(1, limit - RESERVED_DESCRIPTORS)
    log.warning("ingress.max_connections is %d, but the descriptor limit (RLIMIT_NOFILE hard limit %d) allows "
                "%d sessions; more get 421 4.7.0 (raise LimitNOFILE= or `ulimit -Hn`)", max_connections, limit,
                capacity)
    return capacity
