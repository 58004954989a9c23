"""How many sessions the ingress holds: the descriptor limit, limit exceptions, idle clients.

Real SMTP over loopback (the `serve` fixture of test_smtp_checks); the descriptor limits are the
real RLIMIT_NOFILE of this process, or of a child process whose hard limit is lowered first.
"""
from __future__ import annotations

import asyncio
import resource
import subprocess
import sys

import pytest

from ingress.descriptors import RESERVED_DESCRIPTORS, connection_capacity
from ingress.limits import ConnectionLimits
from pipeline.settings import IngressSettings
from tests.ingress.test_smtp_checks import connect, serve  # noqa: F401 (a fixture)
from tests.ingress.test_smtp_session import Client

pytestmark = pytest.mark.timeout(30)


async def connect_from(port: int, source: str) -> tuple[Client, list[str]]:
    client = Client(*await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)))
    return client, await client.reply()


# ---- limits ---------------------------------------------------------------------------------------


async def test_allowlisted_clients_are_not_held_to_the_per_ip_limit_but_to_the_total(serve):  # noqa: F811
    settings = IngressSettings(max_connections=3, max_connections_per_ip=1, client_allowlist=["127.0.0.1/32"])
    _, port = await serve(settings=settings)
    sessions = [await connect(port) for _ in range(4)]  # held open: a dropped client would free its slot
    greetings = [greeting for _, greeting in sessions]
    assert [g[0][:4] for g in greetings[:3]] == ["220 "] * 3
    assert greetings[3] == ["421 4.7.0 Too many connections, try again later"]


async def test_other_clients_are_held_to_the_per_ip_limit(serve):  # noqa: F811
    settings = IngressSettings(max_connections=10, max_connections_per_ip=1, client_allowlist=["127.0.0.1/32"])
    sink, port = await serve(settings=settings)
    a, first = await connect_from(port, "127.0.3.1")
    b, second = await connect_from(port, "127.0.3.1")
    c, other = await connect_from(port, "127.0.3.2")
    assert first[0].startswith("220 ") and other[0].startswith("220 ")
    assert second == ["421 4.7.0 Too many connections from your address, try again later"]
    assert [r.client_ip for r in sink.rejects()] == ["127.0.3.1"]


def test_an_exempt_session_still_counts_and_is_released():
    limits = ConnectionLimits(total=2, per_ip=1)
    assert limits.acquire("10.0.0.1", exempt=True) is None
    assert limits.acquire("10.0.0.1", exempt=True) is None
    assert limits.acquire("10.0.0.2") is not None  # the total is reached
    limits.release("10.0.0.1")
    limits.release("10.0.0.1")
    assert limits.total == 0 and not limits.by_ip


async def test_an_idle_client_is_disconnected_after_the_timeout(serve):  # noqa: F811
    _, port = await serve(settings=IngressSettings(data_timeout=0.3))
    client, greeting = await connect(port)
    assert greeting[0].startswith("220 ")
    assert (await client.cmd("EHLO idle.ext.test")).startswith("250 ")
    started = asyncio.get_running_loop().time()
    await client.rest()  # returns at EOF: the server closed the connection
    assert asyncio.get_running_loop().time() - started < 2.0


# ---- descriptors ----------------------------------------------------------------------------------


@pytest.fixture
def restore_nofile():
    saved = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield saved
    resource.setrlimit(resource.RLIMIT_NOFILE, saved)


def test_the_soft_descriptor_limit_is_raised_to_the_hard_limit(restore_nofile):
    _, hard = restore_nofile
    if hard != resource.RLIM_INFINITY and hard < 2000 + RESERVED_DESCRIPTORS:
        pytest.skip(f"hard RLIMIT_NOFILE {hard} is too low for this test")
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))
    assert connection_capacity(2000) == 2000
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert soft == (hard if hard != resource.RLIM_INFINITY else 2000 + RESERVED_DESCRIPTORS)


def test_a_low_hard_limit_lowers_the_capacity_and_says_so():
    # in a child: an unprivileged process cannot raise its hard limit again once lowered
    code = ("import logging, resource, sys\n"
            "logging.basicConfig(level=logging.INFO, stream=sys.stdout, format='%(levelname)s %(message)s')\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (300, 3000))\n"
            "from ingress.descriptors import connection_capacity\n"
            "print('capacity', connection_capacity(5000))\n"
            "print('soft', resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert f"capacity {3000 - RESERVED_DESCRIPTORS}" in out
    assert "soft 3000" in out
    assert "WARNING ingress.max_connections is 5000, but the descriptor limit" in out


# ---- stress: idle sessions give their slots back sooner ------------------------------------------

STRESSED = dict(max_connections=2, stress_threshold=0.5, stress_timeout=0.3, data_timeout=30.0)


async def test_under_stress_an_idle_session_gets_the_short_timeout(serve):  # noqa: F811
    _, port = await serve(settings=IngressSettings(**STRESSED))
    client, _ = await connect(port)  # one of two slots in use: at the threshold
    assert (await client.cmd("EHLO idle.ext.test")).startswith("250 ")
    started = asyncio.get_running_loop().time()
    await client.rest()
    assert asyncio.get_running_loop().time() - started < 2.0


async def test_below_the_threshold_an_idle_session_keeps_the_normal_timeout(serve):  # noqa: F811
    _, port = await serve(settings=IngressSettings(**{**STRESSED, "stress_threshold": 1.0}))
    client, _ = await connect(port)
    assert (await client.cmd("EHLO idle.ext.test")).startswith("250 ")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(client.reader.read(), 1.0)  # still open after 3 x stress_timeout


async def test_under_stress_a_message_being_sent_keeps_the_data_timeout(serve):  # noqa: F811
    sink, port = await serve(settings=IngressSettings(**STRESSED))
    client, _ = await connect(port)
    await client.envelope()
    await asyncio.sleep(1.0)  # a slow sender: longer than stress_timeout before the body
    assert (await client.cmd(b"Subject: slow\r\n\r\nbody\r\n.")).startswith("250 ")
    assert len(sink.persisted) == 1
