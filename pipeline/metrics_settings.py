"""`[metrics]`: where each component serves its Prometheus metrics (`pipeline.metrics`).

Kept apart from `pipeline.settings` (which imports it into `Settings`). Every component process
serves ``GET /metrics`` on ``host`` at a port of its own: ``base_port`` plus the component's index
in the table of components (`pipeline.cli.components.metrics_port`), plus ``instance_stride`` times
its instance number (`POSTSTELLE_INSTANCE`), so a second instance of a stage on the same host does
not collide with the first.
"""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.settings_base import ConfigError

__all__ = ["MetricsSettings"]


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    enabled: bool = True
    host: str = "127.0.0.1"  # loopback: a site's Prometheus scrapes through its own agent or network policy
    base_port: int = 9400
    # ports between instance n and n+1 of the same component; 0: the instance does not move the
    # port (one component per host or pod, as in deploy/k8s/, where the instance is the pod's name)
    instance_stride: int = 100
    lag_interval: float = 5.0  # seconds between two readings of a consumer's lag

    def __post_init__(self) -> None:
        if not 1 <= self.base_port <= 65535:
            raise ConfigError(f"metrics.base_port: expected 1..65535, got {self.base_port}")
        if self.instance_stride < 0:
            raise ConfigError(f"metrics.instance_stride: expected 0 or more, got {self.instance_stride}")
        if self.lag_interval <= 0:
            raise ConfigError(f"metrics.lag_interval: expected more than 0, got {self.lag_interval}")

    def port(self, index: int, instance: str = "0") -> int:
        """The port of the component at `index` of the table, instance `instance` (a number)."""
        if self.instance_stride == 0:
            return self.base_port + index
        if index >= self.instance_stride:
            raise ConfigError(f"metrics.instance_stride ({self.instance_stride}) must exceed the number of "
                              f"components (at least {index + 1})")
        try:
            number = int(instance)
        except ValueError:
            raise ConfigError(f"POSTSTELLE_INSTANCE {instance!r}: the metrics port needs a number") from None
        port = self.base_port + index + number * self.instance_stride
        if not 1 <= port <= 65535:
            raise ConfigError(f"metrics: port {port} of component {index}, instance {instance} is out of range")
        return port
