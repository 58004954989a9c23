"""The Kubernetes manifests under deploy/k8s/ are what `poststelle deploy k8s` makes of the local topology."""
from __future__ import annotations

import yaml

from pipeline.bus import Topics
from pipeline.cli import main
from pipeline.cli.components import components, load_config, metrics_port
from pipeline.cli.deploy import k8s_manifests
from pipeline.settings import REPO_ROOT

K8S = REPO_ROOT / "deploy/k8s"
LOCAL = REPO_ROOT / "deploy/local/poststelle.toml"


def test_the_committed_manifests_are_regenerated_unchanged():
    settings = load_config(LOCAL, environ={})
    files = k8s_manifests(settings)
    committed = {p.name: p.read_text(encoding="utf-8") for p in K8S.glob("*.yaml")}
    assert sorted(committed) == sorted(files), "run `poststelle -c deploy/local/poststelle.toml deploy k8s`"
    for name, text in files.items():
        assert committed[name] == text, f"deploy/k8s/{name} drifted: run `poststelle deploy k8s`"


def test_every_component_has_a_deployment_and_every_stage_or_chain_a_lag_scaler():
    settings = load_config(LOCAL, environ={})
    topics = Topics.from_settings(settings)
    documents = [d for p in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text())]
    deployments = {d["spec"]["template"]["spec"]["containers"][0]["args"][1]: d
                   for d in documents if d["kind"] == "Deployment"}
    assert sorted(deployments) == sorted(c.name for c in components(settings))
    for name, d in deployments.items():
        annotations = d["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(metrics_port(settings, name))
    scalers = {d["spec"]["scaleTargetRef"]["name"]: d["spec"] for d in documents if d["kind"] == "ScaledObject"}
    runs = settings.topology.runs()  # a chain of stages, or a stage alone: one scaler each
    assert len(scalers) == len(runs)
    for run in runs:
        name = f"chain-{run[0]}-{run[-1]}" if len(run) > 1 else f"stage-{run[0]}"
        group = f"chain.{run[0]}-{run[-1]}" if len(run) > 1 else run[0]
        (trigger,) = scalers[f"poststelle-{name}"]["triggers"]
        assert trigger["type"] == "kafka"
        assert trigger["metadata"]["consumerGroup"] == f"{settings.kafka.topic_prefix}.{group}"
        assert trigger["metadata"]["topic"] == topics.stage_input(run[0])
        assert scalers[f"poststelle-{name}"]["maxReplicaCount"] == settings.kafka.partitions


def test_the_command_writes_the_files_and_removes_stale_ones(tmp_path):
    (tmp_path / "stage-gone.yaml").write_text("old")
    assert main(["-c", str(LOCAL), "deploy", "k8s", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.yaml")) == sorted(p.name for p in K8S.glob("*.yaml"))
