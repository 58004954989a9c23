"""Several processes of one component (`[supervisor] processes`, pipeline/cli/components.py)."""
from __future__ import annotations

import pytest

from pipeline.cli.components import load_config, pipeline_specs
from pipeline.settings import ConfigError

LOCAL = "deploy/local/poststelle.toml"


def test_a_component_named_in_processes_gets_one_child_per_instance() -> None:
    settings = load_config(LOCAL, environ={"POSTSTELLE_SUPERVISOR__PROCESSES": '{ingress = 3, "stage:spam" = 2}',
                                           "POSTSTELLE_TOPOLOGY__CHAINS": "[]"})
    specs = {s.name: s for s in pipeline_specs(settings)}
    assert [n for n in specs if n.startswith("ingress")] == ["ingress", "ingress.1", "ingress.2"]
    assert specs["ingress.2"].argv[-1] == "ingress" and specs["ingress.2"].env == {"POSTSTELLE_INSTANCE": "2"}
    assert specs["ingress"].env == {}  # instance 0, as before
    assert "stage:spam.1" in specs and "stage:virus.1" not in specs


def test_a_chain_runs_as_several_processes_and_its_stages_not_alone() -> None:
    settings = load_config(LOCAL, environ={"POSTSTELLE_SUPERVISOR__PROCESSES": '{"chain:blocklist-route" = 2}'})
    specs = {s.name: s for s in pipeline_specs(settings)}
    assert specs["chain:blocklist-route.1"].env == {"POSTSTELLE_INSTANCE": "1"}
    assert not [n for n in specs if n.startswith("stage:")]
    with pytest.raises(ConfigError, match="only these run as several processes"):
        pipeline_specs(load_config(LOCAL, environ={"POSTSTELLE_SUPERVISOR__PROCESSES": '{"stage:spam" = 2}'}))


@pytest.mark.parametrize("table, says", [
    ('{web = 2}', "only these run as several processes"),
    ('{"stage:nothere" = 2}', "only these run as several processes"),
    ('{ingress = 0}', "expected 1 to 16"),
    ('{ingress = "two"}', "expected an integer"),
    ('[1, 2]', "expected a table (name = an integer)"),
])
def test_a_wrong_processes_table_is_refused_with_the_key(table: str, says: str) -> None:
    with pytest.raises(ConfigError, match="supervisor.processes") as refused:
        pipeline_specs(load_config(LOCAL, environ={"POSTSTELLE_SUPERVISOR__PROCESSES": table}))
    assert says in str(refused.value)
