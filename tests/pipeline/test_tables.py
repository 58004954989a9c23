"""Tables resumed at positions (what a follower with a snapshot does), on the memory transport."""
from __future__ import annotations

import asyncio

from pipeline.tables import MemoryLog, MemoryTransport, follow_tables


async def test_open_at_positions_reads_only_what_follows():
    memory = MemoryLog(["a", "b"])
    memory.records["a"].extend([("k1", b"1"), ("k2", b"2"), ("k3", b"3")])
    memory.records["b"].extend([("x", b"9")])
    transport = MemoryTransport(memory)
    assert await transport.open({"a": {0: 2}})
    seen = []
    await transport.read_to_end(lambda table, key, value: seen.append((table, key)))
    assert seen == [("a", "k3"), ("b", "x")]
    assert await transport.positions() == {"a": {0: 3}, "b": {0: 1}}


async def test_positions_that_do_not_fit_read_everything():
    memory = MemoryLog(["a"])
    memory.records["a"].append(("k1", b"1"))
    for start in ({"a": {0: 5}}, {"a": {1: 0}}, {"other": {0: 0}}):
        transport = MemoryTransport(memory)
        assert not await transport.open(start)
        assert await transport.positions() == {"a": {0: 0}}


async def test_follow_tables_rewinds_when_the_start_does_not_fit():
    memory = MemoryLog(["a"])
    memory.records["a"].extend([("k1", b"1"), ("k2", b"2")])
    seen, rewound, caught_up = [], [], asyncio.Event()
    task = asyncio.create_task(follow_tables(MemoryTransport(memory), lambda t, k, v: seen.append(k), caught_up,
                                             label="test", start={"a": {0: 7}}, on_rewind=lambda: rewound.append(1)))
    await asyncio.wait_for(caught_up.wait(), 5)
    task.cancel()
    assert (seen, rewound) == (["k1", "k2"], [1])
