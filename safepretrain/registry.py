"""Registries: one list of names per kind of component (judge, decoder, attack, scorer, world, launcher).

A registry maps a name to an `Entry`: the component's builder (what the code calls), its settings model (a pydantic
model of the config section it reads, documented field by field), the section's attribute name on the config, and
optional checks of a config that selects it. Config validation, CLI choices, serve and the report read the names
from here; nothing else spells them. Adding a component is one file plus one `register` line in its package::

    DECODERS.register("greedy", greedy.decode, settings=greedy.GreedySettings)

A component without a config section of its own (`section=None`) runs with its settings model's defaults.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

T = TypeVar("T")


class RegistryError(KeyError):
    """An unknown name; the message lists the registered ones."""

    def __str__(self) -> str:  # KeyError quotes its argument; this message is meant to be read
        return str(self.args[0])


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    build: T
    settings: type[BaseModel] | None = None
    """The settings model of the component (its config section's model)."""
    section: str | None = None
    """Attribute of the parent config section that holds this component's settings (e.g. `safebeam` of `eval`);
    None: the settings model's defaults."""
    check: Callable[[Any], list[str]] | None = None
    """Problems of a whole study config that selects this component (e.g. a judge's endpoint is not set)."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """Kind-specific facts about the component (e.g. an attack's prompt limit), read by its kind's caller."""

    def settings_from(self, parent: Any) -> BaseModel | None:
        """This component's settings: its section of `parent` (a config section), else its model's defaults."""
        if self.section is not None:
            return getattr(parent, self.section)
        return self.settings() if self.settings is not None else None


class Registry(Generic[T]):
    """Name → `Entry` for one kind of component, in registration order."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, build: T, *, settings: type[BaseModel] | None = None, section: str | None = None,
                 check: Callable[[Any], list[str]] | None = None, **options: Any) -> T:
        """Add `name`; registering a name twice is an error (remove it first with `unregister`)."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered already")
        self._entries[name] = Entry(name, build, settings, section, check, options)
        return build

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def __getitem__(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise RegistryError(f"unknown {self.kind} {name!r}; registered: {', '.join(self._entries)}") from None

    def problems(self, names: list[str] | str, field: str, cfg: Any = None) -> list[str]:
        """`- field: …` lines for the unknown names among `names`, then the checks of the known ones on `cfg`."""
        given = [names] if isinstance(names, str) else list(names)
        unknown = [n for n in given if n not in self._entries]
        out = [f"- {field}={names}: unknown {unknown}; registered {self.kind}s: {', '.join(self._entries)}"] \
            if unknown else []
        if cfg is not None:
            for n in given:
                check = self._entries[n].check if n in self._entries else None
                out += [f"- {p}" for p in (check(cfg) if check else [])]
        return out
