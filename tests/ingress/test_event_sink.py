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
