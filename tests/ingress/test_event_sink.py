"""The ingress's session events (ingress/server.py `KafkaEventSink.notify`): best effort, batched."""
from __future__ import annotations

import asyncio

from ingress.server import KafkaEventSink
from pipeline.config import load_settings
from pipeline.producers import RenewingProducer
from schemas.events import SmtpConnect, decode_event
from tests.pipeline.test_producers import KAFKA, Factory


def _sink(tmp_path, factory: Factory) -> KafkaEventSink:
    sink = KafkaEventSink(load_settings(None, environ={"POSTSTELLE_HOME": str(tmp_path)}))
    sink._plain = RenewingProducer(KAFKA, "ingress-sessions", make=factory)  # the broker's stand-in
    return sink


def _connect(n: int) -> SmtpConnect:
    return SmtpConnect(session_id=f"s{n}", client_ip="127.0.0.2", client_port=1000 + n, listener="mx")


async def test_session_events_queued_together_are_sent_by_one_task_in_order(tmp_path):
    factory = Factory()
    sink = _sink(tmp_path, factory)
    for n in range(5):
        sink.notify(_connect(n))
    assert len(sink._notifications) == 5  # queued, not yet sent: one task for all of them
    await sink._notifier
    assert [decode_event(v).session_id for v in factory.made[0].sent] == [f"s{n}" for n in range(5)]
    assert sink.dropped_notifications == 0 and not sink._notifications


async def test_events_the_broker_does_not_take_are_counted_not_raised(tmp_path):
    factory = Factory(["ok", "fail", "ok"])
    sink = _sink(tmp_path, factory)
    for n in range(3):
        sink.notify(_connect(n))
    await sink._notifier
    assert sink.dropped_notifications == 1
    sink.notify(_connect(9))  # the next batch goes out on a new producer
    await asyncio.wait_for(sink._notifier, 2)
    assert decode_event(factory.made[-1].sent[-1]).session_id == "s9"


async def test_once_closing_a_message_is_refused_before_anything_of_it_is_sent(tmp_path):
    """A commit cut short at shutdown could land after its client got no 250: the retry would be a copy."""
    import pytest

    from schemas.events import Received

    sink = _sink(tmp_path, Factory())
    await sink.close(timeout=0.1)
    with pytest.raises(ConnectionError, match="ingress stopping"):
        await sink.persist(Received.__new__(Received))
    assert not sink._queue and sink._flushing is None
