"""What every section of the configuration shares: the error it raises and how it reads durations."""
from __future__ import annotations

import re

__all__ = ["ConfigError", "parse_duration"]

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class ConfigError(ValueError):
    """A configuration key is unknown or its value has the wrong form."""


def parse_duration(key: str, text: str) -> float:
    """Seconds in "90s", "5m", "4h", "7d" (a bare number is seconds)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", text)  # no spaces: it names a retry topic
    if not match or float(match.group(1)) <= 0:
        raise ConfigError(f"{key}: expected a duration such as 30s, 5m, 4h or 7d, got {text!r}")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
