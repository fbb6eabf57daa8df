"""Name -> factory registries for backbones, trackers and objectives.

A registry maps a name to a factory (a class or a function). ``register`` is a
decorator, ``create(name, **kwargs)`` builds an instance, ``list()`` enumerates names.
Unknown names raise :class:`UnknownNameError` listing close matches.

An entry may carry a ``card`` (typed metadata: :class:`~mosic.backbones.card.BackboneCard`,
:class:`~mosic.trackers.card.TrackerCard`, :class:`~mosic.objectives.card.ObjectiveCard`)
and ``aliases``: other names that resolve to the same entry (``get``, ``create``, ``card``
and ``in`` accept them; ``list()`` shows canonical names only). ``create`` stamps the
instance's ``name`` with the canonical registry name (also when called through an alias)
on instances whose class declares a ``name`` attribute (``Tracker``, ``Objective``,
``Backbone`` do; their class default names instances made directly from the class).
Third-party
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
    aliases: tuple[str, ...] = ()


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
        self._aliases: dict[str, str] = {}  # alias -> canonical name
        self._entry_points_loaded = entry_point_group is None

    def register(
        self,
        name: str | Callable[..., T] | None = None,
        *,
        card: Any = None,
        aliases: tuple[str, ...] | list[str] = (),
        override: bool = False,
        **defaults: Any,
    ):
        """Decorator registering a factory under ``name`` (default: its ``__name__``).

        ``defaults`` are keyword arguments passed to the factory unless the caller
        overrides them, so one class can be registered under several names::

            @register_backbone("vit-tiny", arch="vit_tiny_patch16_224")
            @register_backbone("vit-small", arch="vit_small_patch16_224")
            class TimmViT(Backbone): ...

        ``card`` is the entry's metadata; a card with a ``name`` must carry this name.
        ``aliases`` are extra names for the same entry, e.g. an old name kept working::

            @register_objective("mosic-still", aliases=("static",), target="still")
        """
        if isinstance(aliases, str):
            aliases = (aliases,)
        aliases = tuple(aliases)

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            key = name if isinstance(name, str) else factory.__name__
            card_name = getattr(card, "name", None)
            if isinstance(card_name, str) and card_name != key:
                raise ValueError(f"{self.kind} {key!r} is registered with the card of {card_name!r}")
            for new in (key, *aliases):
                taken = self._entries.get(new) or self._entries.get(self._aliases.get(new, ""))
                if taken is not None and not override and taken.factory is not factory:
                    what = "name" if new in self._entries else f"alias of {taken.name!r}"
                    raise ValueError(
                        f"{self.kind} {new!r} is already registered (as a {what}) by "
                        f"{_qualname(taken.factory)}; pass override=True to replace it"
                    )
            if key in self._aliases:  # a canonical name replaces an alias (override)
                self._drop_alias(key)
            for alias in aliases:
                if alias in self._entries:
                    del self._entries[alias]
                self._drop_alias(alias)
                self._aliases[alias] = key
            self._entries[key] = Entry(key, factory, card, dict(defaults), aliases)
            return factory

        if callable(name) and not isinstance(name, str):  # used as bare @register
            factory, name = name, None
            return decorator(factory)
        return decorator

    def _drop_alias(self, alias: str) -> None:
        canonical = self._aliases.pop(alias, None)
        entry = self._entries.get(canonical) if canonical else None
        if entry is not None and alias in entry.aliases:
            self._entries[canonical] = Entry(
                entry.name, entry.factory, entry.card, entry.defaults, tuple(a for a in entry.aliases if a != alias)
            )

    def canonical(self, name: str) -> str:
        """The registered name that ``name`` (a name or an alias) resolves to."""
        return self.get(name).name

    def aliases(self) -> dict[str, str]:
        """alias -> canonical name, for every alias."""
        self._load_entry_points()
        return dict(sorted(self._aliases.items()))

    def get(self, name: str) -> Entry[T]:
        """The entry for ``name`` or an alias of it; raises :class:`UnknownNameError` with close matches."""
        if not isinstance(name, str):
            raise TypeError(f"{self.kind} name must be a string, got {type(name).__name__}")
        if name not in self._entries and name not in self._aliases:
            self._load_entry_points()
        try:
            return self._entries[self._aliases.get(name, name)]
        except KeyError:
            raise UnknownNameError(self._unknown_message(name)) from None

    def create(self, name: str, **kwargs: Any) -> T:
        """Build the registered ``name`` with the registered defaults updated by ``kwargs``.

        The instance's ``name`` is set to the canonical registry name when its class
        declares a ``name`` attribute (see the module docstring)."""
        entry = self.get(name)
        instance = entry.factory(**{**entry.defaults, **kwargs})
        if hasattr(type(instance), "name") and isinstance(getattr(instance, "name", None), str):
            try:
                instance.name = entry.name
            except (AttributeError, TypeError):  # a read-only name: leave it
                pass
        return instance

    def name_for(self, factory: Callable[..., Any], **kwargs: Any) -> str | None:
        """The canonical name registered for ``factory`` whose defaults all equal ``kwargs``'
        values (the most specific such entry), or None: what a directly built instance
        of a class registered under several names is called, e.g.
        ``TRACKERS.name_for(RaftTracker, model="small") == "raft-small"``."""
        best: tuple[int, str] | None = None
        for entry in self._entries.values():
            if entry.factory is not factory:
                continue
            if all(k in kwargs and kwargs[k] == v for k, v in entry.defaults.items()):
                if best is None or len(entry.defaults) > best[0]:
                    best = (len(entry.defaults), entry.name)
        return None if best is None else best[1]

    def card(self, name: str) -> Any:
        return self.get(name).card

    def list(self, pattern: str | None = None) -> list[str]:
        """Sorted registered names, optionally filtered by a glob ``pattern``."""
        self._load_entry_points()
        names = sorted(self._entries)
        return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]

    def __contains__(self, name: object) -> bool:
        """True for registered names and their aliases."""
        self._load_entry_points()
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())

    def _unknown_message(self, name: str) -> str:
        names = self.list()
        close = difflib.get_close_matches(name, [*names, *self._aliases], n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(repr(c) for c in close)}?" if close else ""
        aliases = "".join(f", {a} (= {c})" for a, c in sorted(self._aliases.items()))
        return (
            f"unknown {self.kind} {name!r}.{hint} Registered {self.kind}s: "
            f"{', '.join(names) or '(none)'}{aliases}. Register your own with "
            f"mosic.register_{self.kind}."
        )

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in importlib.metadata.entry_points(group=self.entry_point_group):
            if ep.name in self._entries or ep.name in self._aliases:
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
