"""The Prometheus textfile writer."""
from __future__ import annotations

import pytest

from pipeline.metrics import Metrics, metrics_file


def test_file_format_and_atomic_write(tmp_path):
    path = tmp_path / "metrics" / "stage-virus.prom"
    metrics = Metrics(path)
    metrics.describe("poststelle_scans_total", "counter", "messages scanned, by result")
    metrics.set("poststelle_scanner_up", 1, {"stage": "virus"})
    metrics.inc("poststelle_scans_total", {"stage": "virus", "result": "clean"})
    metrics.inc("poststelle_scans_total", {"stage": "virus", "result": "clean"}, by=2)
    metrics.inc("poststelle_scans_total", {"stage": "virus", "result": 'we"ird\\'})
    assert metrics.flush()
    assert path.read_text() == (
        "# TYPE poststelle_scanner_up gauge\n"
        'poststelle_scanner_up{stage="virus"} 1\n'
        "# HELP poststelle_scans_total messages scanned, by result\n"
        "# TYPE poststelle_scans_total counter\n"
        'poststelle_scans_total{result="clean",stage="virus"} 3\n'
        'poststelle_scans_total{result="we\\"ird\\\\",stage="virus"} 1\n'
    )
    assert [p.name for p in path.parent.iterdir()] == ["stage-virus.prom"]  # no temporary file left


def test_counters_wait_for_the_interval_but_gauge_changes_do_not(tmp_path):
    path = tmp_path / "m.prom"
    metrics = Metrics(path, min_interval=3600)
    metrics.inc("c_total")
    assert metrics.flush()
    metrics.inc("c_total")
    assert not metrics.flush()  # within the interval
    assert "c_total 1" in path.read_text()
    metrics.set("up", 0)
    assert metrics.flush()  # a gauge that changed is written at once
    assert "c_total 2" in path.read_text() and "up 0" in path.read_text()
    metrics.set("up", 0)
    assert not metrics.flush(force=True)  # nothing changed
    metrics.inc("c_total")
    assert metrics.flush(force=True)


def test_misuse_is_refused(tmp_path):
    metrics = Metrics(tmp_path / "m.prom")
    metrics.inc("x_total")
    with pytest.raises(ValueError):
        metrics.set("x_total", 1)  # a counter is not a gauge
    with pytest.raises(ValueError):
        metrics.inc("x_total", by=-1)
    with pytest.raises(ValueError):
        metrics.inc("bad name")
    with pytest.raises(ValueError):
        metrics.inc("x_total", {"bad-label": "v"})


def test_file_name_per_component_and_instance(tmp_path, monkeypatch):
    assert metrics_file(tmp_path, "stage:virus") == tmp_path / "metrics" / "stage-virus.prom"
    monkeypatch.setenv("POSTSTELLE_INSTANCE", "2")
    assert metrics_file(tmp_path, "stage:virus") == tmp_path / "metrics" / "stage-virus.2.prom"
