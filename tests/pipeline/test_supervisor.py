"""What the supervisor shows for a component that waits for the broker (its state file)."""
from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import orjson
import pytest

from pipeline.localstack import ServiceSpec
from pipeline.config import load_settings
from pipeline.supervisor import Supervisor, state_file


@pytest.fixture
def supervisor(tmp_path) -> Supervisor:
    settings = load_settings(None, environ={"POSTSTELLE_HOME": str(tmp_path)})
    spec = ServiceSpec(name="stage:route", argv=[sys.executable, "-c", "pass"])
    supervisor = Supervisor(settings, [], [spec])
    child = supervisor.child("stage:route")
    child.process = SimpleNamespace(pid=os.getpid(), returncode=None)  # the child's process, as far as shown
    child.state = "ready"
    return supervisor


def _write_state(supervisor: Supervisor, pid: int) -> None:
    path = state_file(supervisor.settings, "stage:route")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps({"pid": pid, "waiting_for": "kafka", "since": 0, "reasons": {}}))


def test_a_component_waiting_for_kafka_is_shown_so_and_is_not_ready(supervisor):
    _write_state(supervisor, os.getpid())
    shown = supervisor.status()["components"]["stage:route"]
    assert shown["state"] == "waiting for kafka" and shown["restarts"] == 0
    assert not supervisor.all_ready()


def test_a_state_file_of_an_earlier_process_is_ignored(supervisor):
    _write_state(supervisor, os.getpid() + 1)
    assert supervisor.status()["components"]["stage:route"]["state"] == "ready"
    assert supervisor.all_ready()


def test_without_a_state_file_the_component_is_ready(supervisor):
    assert state_file(supervisor.settings, "stage:route").name == "stage-route.state"
    assert supervisor.status()["components"]["stage:route"]["state"] == "ready"
