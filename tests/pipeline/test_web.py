"""Serving an ASGI application inside our own loop: it listens, leaves the process's signals and
logging alone, reports a port in use as an error of its own, and stops promptly."""
from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from pipeline.web import serving


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


async def slow(request: Request) -> PlainTextResponse:
    await asyncio.sleep(30)
    return PlainTextResponse("late")


APP = Starlette(routes=[Route("/", hello), Route("/slow", slow)])


def refused(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


async def test_it_serves_on_the_bound_port_and_stops_with_the_block() -> None:
    async with serving(APP, "127.0.0.1", 0, name="test") as port:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            response = await http.get("/")
        assert (response.status_code, response.text) == (200, "hello")
        assert "server" not in response.headers  # no advertising of what runs here
    assert refused(port)


async def test_ipv6_loopback() -> None:
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    async with serving(APP, "::1", 0, name="test") as port:
        async with httpx.AsyncClient(base_url=f"http://[::1]:{port}") as http:
            assert (await http.get("/")).text == "hello"


async def test_the_process_keeps_its_signal_handlers_and_logging() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    root = logging.getLogger()
    logging_before = (root.level, list(root.handlers), logging.getLogger("uvicorn").handlers[:])
    try:
        async with serving(APP, "127.0.0.1", 0, name="test"):
            assert {sig: signal.getsignal(sig) for sig in handlers} == handlers
            signal.raise_signal(signal.SIGTERM)
            await asyncio.wait_for(stop.wait(), 5)  # our handler, not uvicorn's
        assert {sig: signal.getsignal(sig) for sig in handlers} == handlers
        assert (root.level, list(root.handlers), logging.getLogger("uvicorn").handlers[:]) == logging_before
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


async def test_a_port_in_use_is_an_oserror_not_an_exit() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(OSError):
            async with serving(APP, "127.0.0.1", port, name="test"):
                pass


async def test_a_request_in_flight_does_not_hold_up_stopping() -> None:
    async with httpx.AsyncClient(timeout=60) as http:
        async with serving(APP, "127.0.0.1", 0, name="test", graceful_seconds=1) as port:
            pending = asyncio.create_task(http.get(f"http://127.0.0.1:{port}/slow"))
            await asyncio.sleep(0.3)
            started = time.monotonic()
        assert time.monotonic() - started < 5
        with pytest.raises(httpx.HTTPError):
            (await pending).raise_for_status()
