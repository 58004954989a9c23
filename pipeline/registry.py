"""Registries of named components: stages and SMTP-time checks are found by name, and a name is
taken once (Mailman's rule).

A stage or check module registers its class when it is imported (`@register` for stages,
`ingress.checks.register_check` for checks). Which modules are imported is the composition root's
business (`pipeline.cli.components`): the runtime never imports the stages or checks itself, it
only looks up what was registered, and the settings loader validates `[stages.<name>]` and
`[checks.<name>]` sections against the `Settings` classes found here.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

__all__ = ["Registry", "STAGES", "CHECKS", "register", "get_stage", "stage_names", "stage_settings_types",
           "RESERVED_NAMES"]

T = TypeVar("T", bound=type)

# names of the other consumers: a stage's group and transactional ids must not collide with theirs
RESERVED_NAMES = frozenset({"ingress", "retry", "bounce", "verdict", "analytics", "sink", "queue", "deadletter"})


class Registry(Generic[T]):
    """Classes of one kind by their `name`; each must have the `required` attributes."""

    def __init__(self, kind: str, required: Iterable[str], reserved: frozenset[str] = frozenset()) -> None:
        self.kind = kind
        self.required = tuple(required)
        self.reserved = reserved
        self._classes: dict[str, T] = {}

    def register(self, cls: T) -> T:
        """Class decorator: add `cls`. A second class with the same name is an error."""
        for attr in self.required:
            if not hasattr(cls, attr):
                raise TypeError(f"{self.kind} {cls.__name__} lacks {attr!r}")
        name = cls.name  # type: ignore[attr-defined]
        if name in self.reserved or not name.replace("_", "").isalnum():
            raise ValueError(f"{self.kind} name {name!r} is reserved or not a plain word")
        existing = self._classes.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"{self.kind} name {name!r} is taken by {existing.__module__}.{existing.__name__}")
        self._classes[name] = cls
        return cls

    def get(self, name: str) -> T:
        try:
            return self._classes[name]
        except KeyError:
            known = ", ".join(sorted(self._classes)) or "none registered"
            raise KeyError(f"no {self.kind} named {name!r} (known: {known})") from None

    def names(self) -> list[str]:
        return sorted(self._classes)

    def settings_types(self) -> dict[str, type]:
        return {name: cls.Settings for name, cls in self._classes.items()}  # type: ignore[attr-defined]


STAGES: Registry[type] = Registry("stage", ("name", "description", "Settings", "process"), RESERVED_NAMES)
CHECKS: Registry[type] = Registry("check", ("name", "description", "Settings"))

register = STAGES.register
get_stage = STAGES.get
stage_names = STAGES.names
stage_settings_types = STAGES.settings_types
