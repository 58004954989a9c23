"""Serving an ASGI application (Starlette) inside a component's own asyncio loop, with uvicorn.

The project's web stack is Starlette on uvicorn (docs/decisions/0002-web-framework.md). uvicorn is
built to own its process; our components embed it instead, next to their Kafka loop, and this module
is the one place that does so:

- **Signals.** `uvicorn.Server.serve` installs its own SIGINT/SIGTERM handlers while it runs and
  raises the signal again when it ends. A component stops on its own `stop` event
  (`pipeline.cli.common.install_stop_handlers`) and drains in its own order, so the embedded server
  installs none (`_EmbeddedServer.capture_signals`, the override uvicorn's users rely on).
- **Logging.** uvicorn's `Config` would apply its own logging configuration; ``log_config=None``
  leaves the process's alone. No access log.
- **Binding.** uvicorn logs and calls ``sys.exit`` when it cannot bind. The socket is bound here,
  so a port in use is an `OSError` in the caller, like any other start-up failure.
- **Limits.** Request heads up to `MAX_HEADER_BYTES` (h11 refuses larger ones with 400), at most
  ``max_connections`` at once (uvicorn answers 503 beyond), plain HTTP/1.1 (h11), no WebSockets,
  no ``X-Forwarded-*`` trust: nothing here sits behind a proxy.
- **Stopping.** Requests in flight get ``graceful_seconds`` to finish, then they are cancelled: a
  component's shutdown must not wait on a client that does not read.

Bodies are the application's to bound (uvicorn has no body limit): read them with a limit.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import uvicorn

__all__ = ["serving", "MAX_HEADER_BYTES"]

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 65_536


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signals to its host and says when it listens."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.listening.set()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family)


@contextlib.asynccontextmanager
async def serving(
    app: Any,
    host: str,
    port: int,
    *,
    name: str,
    max_connections: int = 64,
    graceful_seconds: int = 5,
) -> AsyncIterator[int]:
    """Serve `app` on ``host:port`` while the block runs; yields the bound port (useful with 0).

    Raises `OSError` if the address cannot be bound. `name` labels the log lines and the task.
    """
    sock = _bind(host, port)
    bound = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        http="h11",
        ws="none",
        lifespan="off",
        proxy_headers=False,
        server_header=False,
        limit_concurrency=max_connections,
        timeout_graceful_shutdown=graceful_seconds,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
    )
    server = _EmbeddedServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name=f"{name}-http")

    def ended(done: asyncio.Task) -> None:
        if not server.should_exit and not done.cancelled():
            log.error("%s: the HTTP server stopped on its own (%r)", name, done.exception())

    task.add_done_callback(ended)
    listening = asyncio.create_task(server.listening.wait())
    try:
        await asyncio.wait({task, listening}, return_when=asyncio.FIRST_COMPLETED)
        if not server.listening.is_set():
            await task  # raises what stopped it
            raise RuntimeError(f"{name}: the HTTP server ended before it listened")
    except BaseException:
        listening.cancel()
        sock.close()
        server.should_exit = True
        with contextlib.suppress(BaseException):
            await task
        raise
    log.info("%s listening on http://%s:%d", name, host if ":" not in host else f"[{host}]", bound)
    try:
        yield bound
    finally:
        server.should_exit = True
        await task  # closes the socket, waits up to graceful_seconds for requests in flight
        log.info("%s stopped listening", name)
