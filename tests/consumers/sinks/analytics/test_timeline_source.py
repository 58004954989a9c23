"""The timeline's analytics source and `poststelle trace` against a real (embedded chDB) store.

Here rather than under tests/pipeline/state because chDB hosts one engine per process: every test
that opens a store shares this directory's session-wide `home`. The events are the scenario of
tests/pipeline/state/timeline_scenario.py, inserted the way the sink inserts them; the timeline the
store's queries give must be the one the plain list gives.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from consumers.sinks.analytics.server import query_app
from consumers.sinks.analytics.store import AnalyticsStore, AsyncAnalyticsStore
from pipeline.clients.analytics import AnalyticsUnavailable
from pipeline.cli import main
from pipeline.state.timeline import build_timeline
from pipeline.state.timeline_source import AnalyticsSource, TraceRequest, message_timeline, trace
from pipeline.web import serving
from schemas.events import epoch_from_iso
from tests.consumers.sinks.analytics.samples import make_settings
from tests.pipeline.state.timeline_scenario import ANNA, HEADER, LENA, MID, OTHER_MID, at, held_part_scenario, scenario


@pytest.fixture
def loaded(home: Path):
    """A store holding both scenarios, and the settings that point at it."""
    settings = make_settings(home)
    store = AnalyticsStore.open(settings)
    s = scenario()
    part_events, copy_id = held_part_scenario()
    store.insert(s.events + part_events)
    yield settings, store, s, copy_id
    store.close()


def test_the_store_gives_the_same_timeline_as_the_plain_events(loaded) -> None:
    settings, store, s, _ = loaded
    source = AnalyticsSource(store.query, settings.sinks.analytics.database)
    pool = source.pool(MID)
    assert not {e.id for e in pool} & s.noise - {e.id for e in s.events if e.type.startswith("smtp_")}
    from_store = build_timeline(MID, pool)
    assert [st.as_dict() for st in from_store.steps] == [st.as_dict() for st in build_timeline(MID, s.events).steps]
    assert [st.type for st in from_store.steps][:5] == ["smtp_reject", "smtp_connect", "smtp_check", "smtp_check",
                                                         "received"]


def test_the_store_finds_by_header_and_by_recipient_and_follows_a_released_copy(loaded) -> None:
    settings, store, _, copy_id = loaded
    source = AnalyticsSource(store.query, settings.sinks.analytics.database)
    assert source.find(TraceRequest(header=HEADER)) == [MID]
    assert source.find(TraceRequest(header="nobody@nowhere")) == []
    since = epoch_from_iso(at(0))
    assert source.find(TraceRequest(recipient=LENA.upper(), since=since)) == [MID]
    assert source.find(TraceRequest(recipient=ANNA, since=since)) == [OTHER_MID]
    assert source.find(TraceRequest(recipient=LENA, since=since, until=epoch_from_iso(at(4)))) == []
    [timeline] = trace(source, TraceRequest(message_id=OTHER_MID))
    assert timeline.copies == [copy_id] and timeline.steps[-1].type == "delivered"


async def test_a_service_reaches_the_store_through_the_running_sink_and_never_opens_the_files(home: Path) -> None:
    settings = make_settings(home)
    with pytest.raises(AnalyticsUnavailable):  # nothing listens yet: a service gets told, it does not open the files
        await asyncio.to_thread(AnalyticsSource.from_settings(settings).pool, MID)
    events = scenario().events
    astore = await AsyncAnalyticsStore.open(settings)
    try:
        await astore.insert(events)
        async with serving(query_app(astore), "127.0.0.1", settings.sinks.analytics.query_port, name="test"):
            source = AnalyticsSource.from_settings(settings)
            timeline = await asyncio.to_thread(message_timeline, source, MID)
    finally:
        await astore.close()
    assert [s.as_dict() for s in timeline.steps] == [s.as_dict() for s in build_timeline(MID, events).steps]


def _config(tmp_path: Path, settings) -> str:
    path = tmp_path / "poststelle.toml"
    path.write_text(f'[paths]\nhome = "{settings.home}"\n\n[sinks.analytics]\n'
                    f'database = "{settings.sinks.analytics.database}"\nquery_port = {settings.sinks.analytics.query_port}\n')
    return str(path)


def test_poststelle_trace_prints_the_steps_in_aligned_columns(loaded, tmp_path: Path, capsys) -> None:
    settings, store, _, _ = loaded
    store.close()  # `poststelle trace` opens the files itself when no sink answers
    config = _config(tmp_path, settings)
    assert main(["--config", config, "trace", HEADER]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f'message {MID}: from <winner@ext.test> to {LENA}, "EARN MONEY FROM HOME TODAY"'
    assert out[1] == ("  2026-12-03 10:00:02.500  ingress     Greylisted for lena.mueller@school.test: the sending "
                      "server was asked to try again later (451 4.7.1 Greylisted, please try again in 2 seconds)")
    assert out[-1] == f"  2026-12-03 10:01:00.300  sink:lmtp   Delivered to {LENA} (250 2.0.0 Saved)"
    assert len({line.index(line.split()[2]) for line in out[1:]}) == 1  # the component column is aligned

    assert main(["--config", config, "trace", MID, "--details"]) == 0
    detailed = capsys.readouterr().out
    assert '    duration_ms: 20.5' in detailed and "by: cli:root@mx1" in detailed

    assert main(["--config", config, "trace", "--recipient", ANNA, "--since", "2026-12-03", "--json"]) == 0
    [timeline] = orjson.loads(capsys.readouterr().out)["timelines"]
    assert timeline["message_id"] == OTHER_MID and timeline["steps"][-1]["details"]["recipient"] == ANNA

    assert main(["--config", config, "trace", "<no-such@example.org>"]) == 1
    assert "nothing found" in capsys.readouterr().err
    assert main(["--config", config, "trace"]) == 2
