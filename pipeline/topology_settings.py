"""The `[topology]` section: which stages run, in which order, and which of them run chained.

`stages` is the order of the checks (each stage's input is the previous stage's `checked.<stage>`
topic). `chains` groups consecutive stages that run in one process and one Kafka transaction
(`pipeline.chain`): e.g. ``chains = [["blocklist", "virus", "attachment", "auth", "expand", "spam",
"route"]]``. A stage in no chain runs alone, as its own consumer group (`pipeline.runner`). Chaining
is a deployment choice only: every stage keeps its name, settings, results and topics either way.

Kept apart from `pipeline.settings` (which imports it into `Settings`) so that file stays short.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.settings_base import ConfigError

__all__ = ["TopologySettings", "chain_name"]


def chain_name(chain: list[str] | tuple[str, ...]) -> str:
    """A chain's name: its first and last stage ("blocklist-route"); components are `chain:<name>`,
    its consumer group `<prefix>.chain.<name>`."""
    return f"{chain[0]}-{chain[-1]}"


@dataclass(frozen=True, slots=True)
class TopologySettings:
    stages: list[str] = field(default_factory=lambda: ["route"])
    # a site's own stages: Python modules imported before the config is validated (each registers
    # its stage classes with pipeline.registry.register)
    stage_modules: list[str] = field(default_factory=list)
    # groups of consecutive stages run in one process and one transaction each; [] runs every stage alone
    chains: list[list[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        seen: dict[str, int] = {}
        for i, chain in enumerate(self.chains):
            key = f"topology.chains[{i}]"
            if len(chain) < 2:
                raise ConfigError(f"{key}: a chain needs two stages or more (a stage in no chain runs alone), "
                                  f"got {chain!r}")
            for stage in chain:
                if stage not in self.stages:
                    raise ConfigError(f"{key}: {stage!r} is not in topology.stages ({', '.join(self.stages)})")
                if stage in seen:
                    raise ConfigError(f"{key}: {stage!r} is already in topology.chains[{seen[stage]}] "
                                      "(a stage runs in one place)")
                seen[stage] = i
            start = self.stages.index(chain[0])
            if self.stages[start:start + len(chain)] != list(chain):
                raise ConfigError(f"{key}: the stages of a chain must be consecutive in topology.stages "
                                  f"({', '.join(self.stages)}), got {', '.join(chain)}")

    def runs(self) -> list[list[str]]:
        """What runs, in stage order: each chain, and each stage in no chain as a list of its own."""
        chain_of = {chain[0]: chain for chain in self.chains}
        runs: list[list[str]] = []
        i = 0
        while i < len(self.stages):
            run = chain_of.get(self.stages[i], [self.stages[i]])
            runs.append(list(run))
            i += len(run)
        return runs

    def chain(self, name: str) -> list[str]:
        """The chain called `name` (see `chain_name`); ConfigError naming the known ones otherwise."""
        for chain in self.chains:
            if chain_name(chain) == name:
                return list(chain)
        known = ", ".join(chain_name(c) for c in self.chains) or "none"
        raise ConfigError(f"chain:{name}: no such chain in topology.chains (known: {known})")
