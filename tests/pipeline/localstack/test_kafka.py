"""The local broker's cluster id: what Kafka's storage tool accepts."""
from __future__ import annotations

import base64
import uuid

from pipeline.localstack import kafka


def test_a_cluster_id_never_starts_with_a_dash(monkeypatch) -> None:
    """The storage tool reads `-t -xyz` as an option: one start in 64 failed with "expected one argument"."""
    dashed = base64.urlsafe_b64decode("-" + "A" * 21 + "==")  # 16 bytes whose encoding starts with "-"
    draws = iter([uuid.UUID(bytes=dashed), uuid.UUID(bytes=dashed), uuid.UUID(int=12345)])
    monkeypatch.setattr(kafka.uuid, "uuid4", lambda: next(draws))
    cluster_id = kafka._new_cluster_id()
    assert not cluster_id.startswith("-") and len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
