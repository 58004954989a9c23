"""Imports point down: schemas ← runtime ← mail, clients ← state ← ingress, stages, sinks, services ← CLI.

Every module of the package is parsed (not imported) and each of its imports of our own packages is
checked against the layer it lives in. Peers do not import each other: a stage does not import a
sink, a service does not import a stage, the ingress imports none of them. Only the command line
(`pipeline/cli/`, the composition root) sees everything.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OURS = ("schemas", "pipeline", "ingress", "consumers")

# (layer, module prefix), most specific prefix first
LAYERS = [
    ("cli", "pipeline.cli"),
    ("mail", "pipeline.mail"),
    ("clients", "pipeline.clients"),
    ("state", "pipeline.state"),
    ("runtime", "pipeline"),
    ("schemas", "schemas"),
    ("ingress", "ingress"),
    ("stages", "consumers.stages"),
    ("sinks", "consumers.sinks"),
    ("services", "consumers.services"),
]
BELOW = {
    "schemas": set(),
    "runtime": {"schemas"},
    "mail": {"schemas", "runtime"},
    "clients": {"schemas", "runtime"},
    "state": {"schemas", "runtime", "mail", "clients"},
    "ingress": {"schemas", "runtime", "mail", "clients", "state"},
    "stages": {"schemas", "runtime", "mail", "clients", "state"},
    "sinks": {"schemas", "runtime", "mail", "clients", "state"},
    "services": {"schemas", "runtime", "mail", "clients", "state"},
    "cli": {"schemas", "runtime", "mail", "clients", "state", "ingress", "stages", "sinks", "services"},
}


def layer_of(module: str) -> str:
    for layer, prefix in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return layer
    raise ValueError(module)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
    return [(line, name) for line, name in found if name.split(".")[0] in OURS]


SOURCES = sorted(p for top in OURS for p in (REPO / top).rglob("*.py") if module_name(p) != "consumers")


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_imports_point_down(path: Path) -> None:
    own = layer_of(module_name(path))
    wrong = [f"{path.relative_to(REPO)}:{line}: {name} ({layer_of(name)})"
             for line, name in imports_of(path) if layer_of(name) not in BELOW[own] | {own}]
    assert not wrong, f"{own} may import only {sorted(BELOW[own])} and itself:\n" + "\n".join(wrong)
