"""One registry per model family: a name, a one-line description and the object that builds / loads it.

    SCORERS = Registry("next-item scorer")
    SCORERS.register("popularity", "training-set item counts", spec)
    SCORERS.get("popularity")          # the spec; an unknown name raises UnknownNameError listing the known ones

The CLI (``thinkrec models``), the pipeline, the benchmarks and serving all look names up here, so adding a
model is one ``register`` call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from thinkrec.errors import UnknownNameError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    description: str
    obj: T


class Registry(Generic[T]):
    """Ordered name → object map with descriptions; registration order is listing order."""

    def __init__(self, family: str):
        self.family = family
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, description: str, obj: T | None = None) -> Callable[[T], T] | T:
        """``register(name, desc, obj)``, or ``@register(name, desc)`` as a decorator."""

        def add(o: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.family} {name!r} is registered twice")
            self._entries[name] = Entry(name, description, o)
            return o

        return add if obj is None else add(obj)

    def get(self, name: str, where: str | None = None) -> T:
        if name not in self._entries:
            prefix = f"{where}: " if where else ""
            raise UnknownNameError(f"{prefix}unknown {self.family} {name!r}; known: {', '.join(self._entries)}")
        return self._entries[name].obj

    def check(self, names: list[str] | tuple[str, ...], where: str) -> None:
        """Raise naming ``where`` (a dotted config field) for the first unknown name."""
        for n in names:
            self.get(n, where)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def entries(self) -> list[Entry[T]]:
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
