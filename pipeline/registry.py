"""Stage registry: stages are found by name, and a name is taken once (Mailman's rule)."""
from __future__ import annotations

import importlib

from pipeline.stage import Stage

__all__ = ["register", "get_stage", "stage_names", "stage_settings_types", "BUILTIN_STAGE_MODULES"]

# modules whose import registers the built-in stages; the topology picks from these by name
BUILTIN_STAGE_MODULES: tuple[str, ...] = (
    "consumers.stages.route",
    "consumers.stages.blocklist",
    "consumers.stages.virus",
    "consumers.stages.attachment",
    "consumers.stages.auth",
)

_STAGES: dict[str, type[Stage]] = {}
_loaded = False


# names of the other consumers: a stage's group and transactional ids must not collide with theirs
RESERVED_NAMES = frozenset({"ingress", "retry", "bounce", "verdict", "analytics", "sink", "queue"})


def register(cls: type[Stage]) -> type[Stage]:
    """Class decorator: add a stage. A second stage with the same name is an error."""
    for attr in ("name", "description", "Settings", "process"):
        if not hasattr(cls, attr):
            raise TypeError(f"stage {cls.__name__} lacks {attr!r}")
    if cls.name in RESERVED_NAMES or not cls.name.replace("_", "").isalnum():
        raise ValueError(f"stage name {cls.name!r} is reserved or not a plain word")
    existing = _STAGES.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(f"stage name {cls.name!r} is taken by {existing.__module__}.{existing.__name__}")
    _STAGES[cls.name] = cls
    return cls


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        for module in BUILTIN_STAGE_MODULES:
            importlib.import_module(module)
        _loaded = True


def get_stage(name: str) -> type[Stage]:
    _load_builtins()
    try:
        return _STAGES[name]
    except KeyError:
        raise KeyError(f"no stage named {name!r} (known: {', '.join(sorted(_STAGES))})") from None


def stage_names() -> list[str]:
    _load_builtins()
    return sorted(_STAGES)


def stage_settings_types() -> dict[str, type]:
    _load_builtins()
    return {name: cls.Settings for name, cls in _STAGES.items()}
