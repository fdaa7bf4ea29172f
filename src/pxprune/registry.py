"""One small generic registry: names map to builders; duplicates and misses are errors."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object table for one concept (criteria, models, datasets, recipes).

    ``register`` is a decorator; ``get`` raises ``ValueError`` naming the valid choices.
    """

    def __init__(self, kind: str, *, pattern: str | None = None, rule: str = "") -> None:
        """``pattern``: a regular expression every name must match in full (``rule`` says it in
        words), for names that end up in folder names and command-line specs."""
        self.kind = kind
        self._pattern = re.compile(pattern) if pattern else None
        self._rule = rule
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        if not isinstance(name, str) or not name or name != name.strip():
            raise ValueError(f"invalid {self.kind} name {name!r}")
        if self._pattern is not None and not self._pattern.fullmatch(name):
            raise ValueError(f"invalid {self.kind} name {name!r}: {self._rule}")
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = obj

    @contextlib.contextmanager
    def scoped(self, name: str, obj: T) -> Iterator[T]:
        """Register ``obj`` for the duration of a ``with`` block (tests, experiments)."""
        self.add(name, obj)
        try:
            yield obj
        finally:
            del self._items[name]

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise ValueError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
