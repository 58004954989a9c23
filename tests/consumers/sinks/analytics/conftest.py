"""chDB hosts one engine per process, at one path at a time: every analytics test shares the one
session-wide `home` (and so one ``<home>/clickhouse`` engine) and isolates itself with a database of
its own (`samples.make_settings`). What needs a second process (the engine lock) runs in a subprocess.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from consumers.sinks.analytics.store import AnalyticsStore
from tests.consumers.sinks.analytics.samples import make_settings


@pytest.fixture(scope="session")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("analytics-home")


@pytest.fixture
def store(home: Path) -> Iterator[AnalyticsStore]:
    st = AnalyticsStore.open(make_settings(home))
    yield st
    st.close()
