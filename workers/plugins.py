"""The plugin registry: plugin classes whose public methods are step methods.

A plugin is a plain class; every public method taking ``(self, ctx, **params)`` is a step
method. Plugins are found through the ``canvasflow.plugins`` entry-point group or registered
explicitly with :func:`plugin`. Registering one name twice is an error.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from orchestrator.errors import PluginError, UnknownPlugin

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "canvasflow.plugins"

_explicit: dict[str, type] = {}
_lock = threading.Lock()


def plugin(name: str) -> Callable[[type], type]:
    """Class decorator: register ``cls`` as plugin ``name`` in every registry built afterwards."""

    def register(cls: type) -> type:
        if not isinstance(cls, type):
            raise PluginError(f"@plugin({name!r}) decorates a class, not {cls!r}")
        with _lock:
            existing = _explicit.get(name)
            if existing is not None and _qualname(existing) != _qualname(cls):
                raise PluginError(
                    f"plugin '{name}' is registered twice: {_qualname(existing)} and {_qualname(cls)}"
                )
            _explicit[name] = cls
        cls.canvasflow_plugin_name = name  # type: ignore[attr-defined]
        return cls

    return register


def _qualname(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


@dataclass(frozen=True)
class MethodInfo:
    """What a step method accepts, as published in the fleet catalog."""

    name: str
    params: tuple[str, ...]
    required: tuple[str, ...]
    accepts_any: bool
    doc: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "params": list(self.params),
            "required": list(self.required),
            "accepts_any": self.accepts_any,
            "doc": self.doc,
        }


def describe(cls: type) -> dict[str, MethodInfo]:
    """The step methods of a plugin class: public callables taking (self, ctx, ...)."""
    methods: dict[str, MethodInfo] = {}
    for attr, fn in inspect.getmembers(cls, predicate=inspect.isfunction):
        if attr.startswith("_"):
            continue
        sig = inspect.signature(fn)
        params = list(sig.parameters.values())[1:]  # drop self
        if not params or params[0].name != "ctx":
            continue  # a helper method, not a step method
        names: list[str] = []
        required: list[str] = []
        accepts_any = False
        for p in params[1:]:
            if p.kind is p.VAR_KEYWORD:
                accepts_any = True
            elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                names.append(p.name)
                if p.default is p.empty:
                    required.append(p.name)
        doc = (inspect.getdoc(fn) or "").split("\n", 1)[0]
        methods[attr] = MethodInfo(attr, tuple(names), tuple(required), accepts_any, doc)
    return methods


class Registry:
    """The plugins one process can run, instantiated once each."""

    def __init__(self) -> None:
        self._classes: dict[str, type] = {}
        self._instances: dict[str, Any] = {}
        self._methods: dict[str, dict[str, MethodInfo]] = {}

    def add(self, name: str, cls: type) -> None:
        existing = self._classes.get(name)
        if existing is not None:
            if existing is cls:
                return
            raise PluginError(
                f"plugin '{name}' is registered twice: {_qualname(existing)} and {_qualname(cls)}"
            )
        methods = describe(cls)
        if not methods:
            raise PluginError(
                f"plugin '{name}' ({_qualname(cls)}) has no step methods: "
                "define public methods taking (self, ctx, ...)"
            )
        self._classes[name] = cls
        self._methods[name] = methods

    @classmethod
    def discover(cls, extra: dict[str, type] | None = None) -> Registry:
        """Entry points of group ``canvasflow.plugins`` plus every ``@plugin`` class imported."""
        reg = cls()
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                loaded = ep.load()
            except Exception:  # a broken third-party plugin must not take the worker down
                log.exception("could not load plugin entry point %s = %s", ep.name, ep.value)
                continue
            if isinstance(loaded, dict):  # an entry point may name a {name: class} mapping
                for name, plugin_cls in loaded.items():
                    reg.add(name, plugin_cls)
            else:
                reg.add(ep.name, loaded)
        with _lock:
            explicit = dict(_explicit)
        for name, plugin_cls in {**explicit, **(extra or {})}.items():
            reg.add(name, plugin_cls)
        return reg

    def configure(self, name: str, **kwargs: Any) -> None:
        """Build plugin ``name``'s one instance with ``kwargs`` (settings a plugin needs)."""
        cls = self._classes.get(name)
        if cls is None:
            raise UnknownPlugin(name, self.names())
        self._instances[name] = cls(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._classes)

    def method(self, plugin_name: str, method: str) -> Callable[..., Any]:
        """The bound step method; UnknownPlugin names what exists."""
        methods = self._methods.get(plugin_name)
        if methods is None:
            raise UnknownPlugin(plugin_name, self.names())
        if method not in methods:
            raise UnknownPlugin(plugin_name, methods, method=method)
        inst = self._instances.get(plugin_name)
        if inst is None:
            inst = self._instances[plugin_name] = self._classes[plugin_name]()
        return getattr(inst, method)

    def catalog(self) -> dict[str, dict[str, dict[str, Any]]]:
        """JSON-ready ``{plugin: {method: {params, required, accepts_any, doc}}}``."""
        return {
            name: {m: info.as_dict() for m, info in sorted(methods.items())}
            for name, methods in sorted(self._methods.items())
        }
