"""Counters and gauges of one process, written as a Prometheus textfile (node_exporter's collector).

Each component owns one file, ``<home>/metrics/<component>.prom``, rewritten whole and atomically
(temporary file + rename), so a reader never sees half a file::

    # TYPE poststelle_scanner_up gauge
    poststelle_scanner_up{stage="virus"} 0
    # TYPE poststelle_scans_total counter
    poststelle_scans_total{result="infected",stage="virus"} 3

`flush()` writes when something changed and `min_interval` has passed since the last write; a
gauge that changes value (a scanner going down) and `flush(force=True)` write at once. Counters
start at 0 when the process starts, as Prometheus expects of a restarted process.
"""
from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from pathlib import Path

__all__ = ["Metrics", "metrics_file"]

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

_Key = tuple[str, tuple[tuple[str, str], ...]]


def metrics_file(home: Path, component: str) -> Path:
    """``<home>/metrics/<component>.prom``; ``:`` in a component name is written ``-``, and the
    instance (``POSTSTELLE_INSTANCE``, when not ``0``) is appended as ``.<instance>``."""
    instance = os.environ.get("POSTSTELLE_INSTANCE", "0")
    suffix = "" if instance == "0" else f".{instance}"
    return Path(home) / "metrics" / f"{component.replace(':', '-')}{suffix}.prom"


class Metrics:
    """The metrics of one component; not thread-safe (one event loop)."""

    def __init__(self, path: Path, min_interval: float = 1.0) -> None:
        self.path = Path(path)
        self.min_interval = min_interval
        self._types: dict[str, str] = {}
        self._help: dict[str, str] = {}
        self._values: dict[_Key, float] = {}
        self._dirty = False
        self._written_at = float("-inf")

    def describe(self, name: str, kind: str, help_text: str = "") -> None:
        """Declare a metric (`kind` ``counter`` or ``gauge``) so it is written even before its first value."""
        self._declare(name, kind)
        if help_text:
            self._help[name] = help_text.replace("\\", "\\\\").replace("\n", " ")

    def inc(self, name: str, labels: Mapping[str, str] | None = None, by: float = 1.0) -> None:
        if by < 0:
            raise ValueError("a counter only goes up")
        self._declare(name, "counter")
        key = _key(name, labels)
        self._values[key] = self._values.get(key, 0.0) + by
        self._dirty = True

    def set(self, name: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        """Set a gauge; a changed value is written at the next `flush` regardless of `min_interval`."""
        self._declare(name, "gauge")
        key = _key(name, labels)
        if self._values.get(key) != value:
            self._values[key] = float(value)
            self._dirty = True
            self._written_at = float("-inf")

    def value(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        return self._values.get(_key(name, labels))

    def flush(self, force: bool = False) -> bool:
        """Write the file if something changed (and the interval passed, unless `force`)."""
        now = time.monotonic()
        if not self._dirty or (not force and now - self._written_at < self.min_interval):
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(self.render(), encoding="utf-8")
        os.replace(tmp, self.path)
        self._dirty = False
        self._written_at = now
        return True

    def render(self) -> str:
        """The text exposition format of every metric, sorted by name and labels."""
        lines: list[str] = []
        for name in sorted(self._types):
            if name in self._help:
                lines.append(f"# HELP {name} {self._help[name]}")
            lines.append(f"# TYPE {name} {self._types[name]}")
            for key in sorted(k for k in self._values if k[0] == name):
                lines.append(f"{name}{_labels_text(key[1])} {_number(self._values[key])}")
        return "\n".join(lines) + "\n"

    def _declare(self, name: str, kind: str) -> None:
        if kind not in ("counter", "gauge"):
            raise ValueError(f"metric kind {kind!r}: expected counter or gauge")
        if not _NAME.match(name):
            raise ValueError(f"not a metric name: {name!r}")
        known = self._types.setdefault(name, kind)
        if known != kind:
            raise ValueError(f"metric {name} is a {known}, not a {kind}")


def _key(name: str, labels: Mapping[str, str] | None) -> _Key:
    pairs = tuple(sorted((labels or {}).items()))
    for label, _ in pairs:
        if not _LABEL.match(label):
            raise ValueError(f"not a label name: {label!r}")
    return name, pairs


def _labels_text(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in pairs) + "}"


def _escape(value: str) -> str:
    """A label value in the text format: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)
