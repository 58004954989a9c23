"""Fixtures of the sink tests."""
from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.consumers.sinks.scripted_server import Script, ScriptedServer


@pytest.fixture
async def serve() -> AsyncIterator:
    """`await serve(Script(...))` starts a scripted server: (server, port); all are closed afterwards."""
    servers: list[ScriptedServer] = []

    async def _serve(script: Script) -> tuple[ScriptedServer, int]:
        servers.append(ScriptedServer(script))
        return servers[-1], await servers[-1].start()

    yield _serve
    for server in servers:
        await server.close()
