"""Name -> factory registries for backbones, trackers and objectives.

A registry maps a name to a factory (a class or a function). ``register`` is a
decorator, ``create(name, **kwargs)`` builds an instance, ``list()`` enumerates names.
Unknown names raise :class:`UnknownNameError` listing close matches. Third-party
packages register through the entry-point group given to the registry
(``mosic.backbones``, ``mosic.trackers``, ``mosic.objectives``): the entry point's name is
the registry name and its object the factory, e.g. in a plugin's pyproject.toml::

    [project.entry-points."mosic.trackers"]
    my-flow = "my_package.trackers:MyFlowTracker"
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib.metadata
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; the message lists close matches."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered factory with its optional card (typed metadata)."""

    name: str
    factory: Callable[..., T]
    card: Any = None
    defaults: dict = field(default_factory=dict)


class Registry(Generic[T]):
    """A registry of factories of one kind.

    Args:
        kind: human word for what is registered ("backbone"), used in messages.
        entry_point_group: importlib entry-point group scanned once, lazily.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._entries: dict[str, Entry[T]] = {}
        self._entry_points_loaded = entry_point_group is None

    def register(
        self,
        name: str | Callable[..., T] | None = None,
        *,
        card: Any = None,
        override: bool = False,
        **defaults: Any,
    ):
        """Decorator registering a factory under ``name`` (default: its ``__name__``).

        ``defaults`` are keyword arguments passed to the factory unless the caller
        overrides them, so one class can be registered under several names::

            @register_backbone("vit-tiny", arch="vit_tiny_patch16_224")
            @register_backbone("vit-small", arch="vit_small_patch16_224")
            class TimmViT(Backbone): ...
        """

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            key = name if isinstance(name, str) else factory.__name__
            if key in self._entries and not override and self._entries[key].factory is not factory:
                raise ValueError(
                    f"{self.kind} {key!r} is already registered by "
                    f"{_qualname(self._entries[key].factory)}; pass override=True to replace it"
                )
            self._entries[key] = Entry(key, factory, card, dict(defaults))
            return factory

        if callable(name) and not isinstance(name, str):  # used as bare @register
            factory, name = name, None
            return decorator(factory)
        return decorator

    def get(self, name: str) -> Entry[T]:
        """The entry for ``name``; raises :class:`UnknownNameError` with close matches."""
        if not isinstance(name, str):
            raise TypeError(f"{self.kind} name must be a string, got {type(name).__name__}")
        if name not in self._entries:
            self._load_entry_points()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self._unknown_message(name)) from None

    def create(self, name: str, **kwargs: Any) -> T:
        """Build the registered ``name`` with the registered defaults updated by ``kwargs``."""
        entry = self.get(name)
        return entry.factory(**{**entry.defaults, **kwargs})

    def card(self, name: str) -> Any:
        return self.get(name).card

    def list(self, pattern: str | None = None) -> list[str]:
        """Sorted registered names, optionally filtered by a glob ``pattern``."""
        self._load_entry_points()
        names = sorted(self._entries)
        return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]

    def __contains__(self, name: object) -> bool:
        self._load_entry_points()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())

    def _unknown_message(self, name: str) -> str:
        names = self.list()
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(repr(c) for c in close)}?" if close else ""
        return (
            f"unknown {self.kind} {name!r}.{hint} Registered {self.kind}s: "
            f"{', '.join(names) or '(none)'}. Register your own with "
            f"mosic.register_{self.kind}."
        )

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in importlib.metadata.entry_points(group=self.entry_point_group):
            if ep.name in self._entries:
                continue
            try:
                factory = ep.load()
            except Exception as exc:  # a broken plugin must not break mosic
                warnings.warn(
                    f"could not load {self.kind} plugin {ep.name!r} ({ep.value}): {exc}",
                    stacklevel=3,
                )
                continue
            if ep.name not in self._entries:  # importing may have registered it already
                self._entries[ep.name] = Entry(ep.name, factory)


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
