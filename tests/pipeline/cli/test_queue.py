"""Choosing deferred deliveries for `poststelle queue`, `queue retry` and `queue delete`: by message id
and by envelope sender (the Kafka side is in tests/integration/test_queue.py and test_delivery.py)."""
from __future__ import annotations

from pipeline.cli.queue import queue_rows, select
from schemas.events import BlobRef, Client, Deferred, Envelope, Received, Reply, Routed
from schemas.ids import new_id


def _deferred(sender: str, recipient: str = "max@school.test") -> Deferred:
    message = Received(message_id=new_id(), envelope=Envelope(mail_from=sender, rcpt_to=[recipient]),
                       client=Client(ip="127.0.0.1", port=1), blob=BlobRef(sha256="0" * 64, size=1))
    routed = Routed(message_id=message.message_id, destination="smarthost", recipients=[recipient], message=message)
    return Deferred(message_id=message.message_id, destination="smarthost", recipient=recipient, attempt=2,
                    reply=Reply(code=450, enhanced="4.7.1", text="rate limited"), routed=routed)


def test_select_by_message_id_and_by_envelope_sender():
    spam = [_deferred("Stolen.Account@school.test", f"r{i}@ext.test") for i in range(3)]
    other, bounce = _deferred("anna.schmidt@school.test"), _deferred("")
    queue = [*spam, other, bounce]
    assert select(queue, None) == queue
    assert select(queue, {other.message_id}) == [other]
    assert select(queue, None, "stolen.account@SCHOOL.test") == spam  # addresses compare without case
    assert select(queue, None, "<stolen.account@school.test>") == spam
    assert select(queue, {spam[0].message_id}, "anna.schmidt@school.test") == []  # both must hold
    assert select(queue, None, "") == [bounce] and select(queue, None, "<>") == [bounce]


def test_the_listing_shows_each_deliverys_sender():
    columns, rows = queue_rows([_deferred("anna.schmidt@school.test"), _deferred("")])
    assert columns[:3] == ["message_id", "sender", "recipient"]
    assert [row[1] for row in rows] == ["anna.schmidt@school.test", "<>"]
    assert rows[0][columns.index("last_reply")] == "450 4.7.1 rate limited"
