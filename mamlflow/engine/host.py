"""The plugin host: loads plugins, keeps one registry per kind of component, and looks names up.

mamlflow never calls ``pm.hook.*``; it asks the host (``get_host().task_family("sinusoid")``).
That keeps three promises in one place:

* **Lazy.** Importing mamlflow loads no plugin. Built-ins (``BUILTINS``) and then entry points of
  the ``mamlflow`` group are imported on the first lookup, and each ``register_*`` hook is called
  the first time its kind is needed, so ``metaflow --help`` never runs ``register_models``.
* **Isolated.** Plugins are imported, validated and called one at a time, each hook
  implementation with a ``register`` callback bound to its plugin. A plugin that fails to
  import, implements a misspelled hook, raises in a hook or registers something invalid or
  duplicated costs one ``PluginWarning`` line naming the package and the fix, and is recorded in
  ``failures``; everything else keeps working. ``MAMLFLOW_STRICT_PLUGINS=1`` raises
  ``PluginError`` instead, and ``MAMLFLOW_AUTOLOAD_PLUGINS=0`` skips entry points altogether.
* **Helpful.** An unknown name raises ``UnknownNameError`` with a did-you-mean and the list of
  what is available.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Literal, cast, get_args

import pluggy
from pydantic import BaseModel

from ..core import (
    Algorithm,
    AlgorithmConfig,
    Callback,
    ModelConfig,
    ModelPlugin,
    OuterConfig,
    OuterOptimizer,
    PluginError,
    Preset,
    TaskConfig,
    TaskFamily,
    UnknownNameError,
    __version__,
    hookspecs,
)

__all__ = [
    "AUTOLOAD_ENV",
    "BUILTINS",
    "ENTRY_POINT_GROUP",
    "STRICT_ENV",
    "Component",
    "ComponentKind",
    "PluginFailure",
    "PluginHost",
    "PluginWarning",
    "get_host",
    "reset_host",
]

ComponentKind = Literal[
    "task_family", "model", "algorithm", "optimizer", "preset", "callback", "command"
]

BUILTINS: tuple[str, ...] = (
    "mamlflow.plugins.sinusoid",
    "mamlflow.plugins.omniglot",
    "mamlflow.plugins.images",
    "mamlflow.plugins.fewshot",
    "mamlflow.plugins.mlp",
    "mamlflow.plugins.conv4",
    "mamlflow.plugins.resnet12",
    "mamlflow.plugins.maml",
    "mamlflow.plugins.metasgd",
    "mamlflow.plugins.anil",
    "mamlflow.plugins.reptile",
    "mamlflow.plugins.mamlpp",
    "mamlflow.plugins.optimizers",
    "mamlflow.plugins.navigation",
    "mamlflow.plugins.halfcheetah",
    "mamlflow.plugins.gaussian_mlp",
    "mamlflow.plugins.trpo",
    "mamlflow.plugins.callbacks",
)
"""Module paths of the built-in plugins, imported (lazily) before any entry point."""

AUTOLOAD_ENV = "MAMLFLOW_AUTOLOAD_PLUGINS"
STRICT_ENV = "MAMLFLOW_STRICT_PLUGINS"
ENTRY_POINT_GROUP = "mamlflow"
BUILTIN_SOURCE = "mamlflow (built-in)"

_KINDS: tuple[ComponentKind, ...] = get_args(ComponentKind)
_HOOKS: dict[ComponentKind, str] = {
    "task_family": "register_task_families",
    "model": "register_models",
    "algorithm": "register_algorithms",
    "optimizer": "register_optimizers",
    "preset": "register_presets",
    "callback": "register_callbacks",
    "command": "register_commands",
}
_LABELS: dict[ComponentKind, tuple[str, str]] = {
    "task_family": ("task family", "task families"),
    "model": ("model", "models"),
    "algorithm": ("algorithm", "algorithms"),
    "optimizer": ("optimizer", "optimizers"),
    "preset": ("preset", "presets"),
    "callback": ("callback", "callbacks"),
    "command": ("command", "commands"),
}
# Class-valued kinds: the base a registered class must subclass, and the base of its ``Config``
# (``None`` where the base has no ``Config``: callbacks are built from the run directory).
_CLASS_KINDS: dict[ComponentKind, tuple[type, type[BaseModel] | None]] = {
    "task_family": (TaskFamily, TaskConfig),
    "model": (ModelPlugin, ModelConfig),
    "algorithm": (Algorithm, AlgorithmConfig),
    "optimizer": (OuterOptimizer, OuterConfig),
    "callback": (Callback, None),
}
_MAX_DETAIL = 240  # characters of an exception or repr quoted in a one-line message


@dataclass(frozen=True)
class Component:
    """One registered component and where it came from, for lookups and ``metaflow plugins``."""

    kind: ComponentKind
    name: str
    obj: Any
    source: str
    """``"mamlflow (built-in)"`` or ``"mamlflow-foo 1.2 (entry point foo)"``."""
    description: str
    distribution: str | None = None
    """The installed package it came from (``"mamlflow"`` for built-ins): what to uninstall."""
    version: str | None = None
    """That package's version (``None`` when ``distribution`` is)."""


@dataclass(frozen=True)
class PluginFailure:
    """A plugin problem that was reported as a warning (or raised, in strict mode)."""

    plugin: str
    source: str
    message: str
    """The one-line text of the warning."""
    distribution: str | None = None
    """The installed package the plugin came from, as in ``Component.distribution``."""
    version: str | None = None
    """That package's version (``None`` when ``distribution`` is)."""


class PluginWarning(UserWarning):
    """A plugin failed to load or registered something invalid; the rest keeps working."""


@dataclass(frozen=True)
class _Plugin:
    """Where a plugin comes from, which decides how its problems are worded and fixed."""

    name: str
    origin: Literal["builtin", "entry_point", "runtime"]
    dist: str | None = None  # "mamlflow" for built-ins; None for runtime plugins
    version: str | None = None

    @property
    def source(self) -> str:
        if self.origin == "builtin":
            return BUILTIN_SOURCE
        if self.origin == "runtime":
            return f"{self.name} (added at runtime)"
        package = f"{self.dist} {self.version}" if self.dist else "unknown package"
        return f"{package} (entry point {self.name})"

    @property
    def who(self) -> str:
        """``plugin 'foo' (mamlflow-foo 1.0)``: the subject of every message about this plugin."""
        if self.origin == "builtin":
            where = "mamlflow, built-in"
        elif self.origin == "runtime":
            where = "added at runtime"
        else:
            where = f"{self.dist} {self.version}" if self.dist else "unknown package"
        return f"plugin '{self.name}' ({where})"

    @property
    def fix(self) -> str:
        """How the user gets rid of the problem without editing the plugin."""
        if self.origin == "builtin":
            return "reinstall it with `pip install --force-reinstall mamlflow` or report a bug"
        if self.origin == "runtime":
            return "fix the plugin passed to PluginHost.add_plugin()"
        if self.dist:
            return f"uninstall it with `pip uninstall {self.dist}` or set {AUTOLOAD_ENV}=0"
        return f"uninstall the package that provides it or set {AUTOLOAD_ENV}=0"

    @property
    def rename_fix(self) -> str:
        """The fix for a duplicate name: rename it, or drop the package that brought it."""
        if self.origin == "builtin":
            return "report a bug"
        if self.origin == "runtime":
            return "rename it"
        return f"rename it or uninstall {self.dist or 'the package that provides it'}"


class PluginHost:
    """A typed facade over pluggy: loads plugins lazily and one at a time, and looks names up.

    ``builtins`` are module paths imported before any entry point (tests pass ``()``).
    ``autoload`` and ``strict`` default to ``MAMLFLOW_AUTOLOAD_PLUGINS`` (on unless ``0``) and
    ``MAMLFLOW_STRICT_PLUGINS`` (off unless ``1``).
    """

    def __init__(
        self,
        *,
        builtins: Sequence[str] = BUILTINS,
        autoload: bool | None = None,
        strict: bool | None = None,
    ) -> None:
        self._builtins = tuple(builtins)
        self._autoload = _env_flag(AUTOLOAD_ENV, default=True) if autoload is None else autoload
        self._strict = _env_flag(STRICT_ENV, default=False) if strict is None else strict
        self._pm: pluggy.PluginManager | None = None
        self._plugins: list[_Plugin] = []  # registered with pluggy, in load order
        self._registries: dict[ComponentKind, dict[str, Component]] = {}
        self._failures: list[PluginFailure] = []

    # -- lookups ---------------------------------------------------------------------------------

    def task_family(self, name: str) -> type[TaskFamily]:
        """The ``TaskFamily`` subclass registered as ``name``."""
        return cast(type[TaskFamily], self._lookup("task_family", name))

    def model(self, name: str) -> type[ModelPlugin]:
        """The ``ModelPlugin`` subclass registered as ``name``."""
        return cast(type[ModelPlugin], self._lookup("model", name))

    def algorithm(self, name: str) -> type[Algorithm]:
        """The ``Algorithm`` subclass registered as ``name``."""
        return cast(type[Algorithm], self._lookup("algorithm", name))

    def optimizer(self, name: str) -> type[OuterOptimizer]:
        """The ``OuterOptimizer`` subclass registered as ``name``."""
        return cast(type[OuterOptimizer], self._lookup("optimizer", name))

    def preset(self, name: str) -> Preset:
        """The ``Preset`` registered as ``name``."""
        return cast(Preset, self._lookup("preset", name))

    def callback(self, name: str) -> type[Callback]:
        """The ``Callback`` subclass registered as ``name``."""
        return cast(type[Callback], self._lookup("callback", name))

    def commands(self) -> dict[str, Any]:
        """CLI commands by name, in registration order; only the CLI asks for these."""
        return {name: c.obj for name, c in self._registry("command").items()}

    def names(self, kind: ComponentKind) -> list[str]:
        """Sorted names of every registered component of ``kind``."""
        return sorted(self._registry(_check_kind(kind)))

    def components(self, kind: ComponentKind | None = None) -> list[Component]:
        """Registered components of ``kind`` (all kinds when ``None``), sorted by kind and name.

        With ``kind=None`` every hook runs, ``register_commands`` included.
        """
        kinds = _KINDS if kind is None else (_check_kind(kind),)
        return [c for k in kinds for _, c in sorted(self._registry(k).items())]

    @property
    def failures(self) -> list[PluginFailure]:
        """Every plugin problem reported so far (a copy), in the order they happened."""
        return list(self._failures)

    @property
    def autoload(self) -> bool:
        """Whether installed entry points are loaded (``MAMLFLOW_AUTOLOAD_PLUGINS``)."""
        return self._autoload

    @property
    def strict(self) -> bool:
        """Whether a plugin problem raises ``PluginError`` (``MAMLFLOW_STRICT_PLUGINS``)."""
        return self._strict

    # -- runtime plugins -------------------------------------------------------------------------

    def add_plugin(self, plugin: object, name: str) -> Callable[[], None]:
        """Register ``plugin`` (a module or any object with ``@hookimpl`` functions) as ``name``.

        For tests and programs embedding mamlflow. It loads after built-ins and entry points,
        so its names lose to theirs on a clash. Returns a function that removes it again; both
        steps forget the registries so the next lookup sees the change.
        """
        pm = self._plugin_manager()
        if pm.has_plugin(name) or any(p.name == name for p in self._plugins):
            raise ValueError(f"a plugin named {name!r} is already registered; pick another name")
        record = _Plugin(name=name, origin="runtime")
        self._registries.clear()
        self._register(record, plugin)

        def undo() -> None:
            if self._pm is not None and self._pm.get_plugin(name) is plugin:
                self._pm.unregister(name=name)
            self._plugins = [p for p in self._plugins if p != record]
            self._failures = [
                f for f in self._failures if (f.plugin, f.source) != (name, record.source)
            ]
            self._registries.clear()

        return undo

    # -- loading ---------------------------------------------------------------------------------

    def _plugin_manager(self) -> pluggy.PluginManager:
        """The pluggy manager, created and filled with every plugin on first use."""
        if self._pm is None:
            self._pm = pluggy.PluginManager(hookspecs.PROJECT)
            self._pm.add_hookspecs(hookspecs)
            version = __version__
            for module_path in self._builtins:
                record = _Plugin(
                    name=module_path, origin="builtin", dist="mamlflow", version=version
                )
                self._load(record, module_path, None)
            if self._autoload:
                for ep in _entry_points():
                    dist = ep.dist
                    record = _Plugin(
                        name=ep.name,
                        origin="entry_point",
                        dist=dist.name if dist is not None else None,
                        version=dist.version if dist is not None else None,
                    )
                    self._load(record, ep.value, ep)
        return self._pm

    def _load(self, record: _Plugin, target: str, ep: EntryPoint | None) -> None:
        """Import one plugin and register it; any exception becomes that plugin's failure."""
        try:
            plugin = ep.load() if ep is not None else importlib.import_module(target)
        except Exception as exc:
            # Entry points name their module; built-ins are named by it already.
            what = "" if target == record.name else f" ({target})"
            self._fail(record, f"failed to load{what}: {_exc_text(exc)}; {record.fix}")
            return
        self._register(record, plugin)

    def _register(self, record: _Plugin, plugin: object) -> None:
        """Hand one plugin to pluggy and reject it whole if any of its hooks is unknown."""
        pm = self._pm
        assert pm is not None
        clash = self._clash(pm, record, plugin)
        if clash is not None:
            self._fail(record, clash)
            return
        try:
            pm.register(plugin, name=record.name)
        except Exception as exc:
            # pluggy may have added some of its hooks before it found the bad one.
            if pm.get_plugin(record.name) is plugin:
                pm.unregister(name=record.name)
            self._fail(record, f"is not a valid mamlflow plugin: {_exc_text(exc)}; {record.fix}")
            return
        try:
            pm.check_pending()
        except pluggy.PluginValidationError:
            unknown = _unknown_hooks(pm, plugin)
            pm.unregister(name=record.name)
            self._fail(
                record,
                f"implements {_describe_unknown_hooks(unknown)}, so none of its hooks are used; "
                f"fix the hook name in the plugin, or {record.fix}",
            )
            return
        self._plugins.append(record)

    def _clash(self, pm: pluggy.PluginManager, record: _Plugin, plugin: object) -> str | None:
        """Why ``plugin`` cannot take its name or be loaded twice; pluggy's own errors are vague."""
        loaded = {p.name: p for p in self._plugins}
        first = loaded.get(record.name)
        if first is not None:
            return (
                f"has the same name as the plugin from {first.source}, which is kept; "
                f"{record.rename_fix}"
            )
        other = pm.get_name(plugin)
        if other is not None:
            source = loaded[other].source if other in loaded else other
            return f"is the same module as the plugin from {source}, already loaded; {record.fix}"
        return None

    # -- registries ------------------------------------------------------------------------------

    def _lookup(self, kind: ComponentKind, name: str) -> Any:
        registry = self._registry(kind)
        if name in registry:
            return registry[name].obj
        raise UnknownNameError(_unknown_name_message(kind, name, sorted(registry)))

    def _registry(self, kind: ComponentKind) -> dict[str, Component]:
        """The components of ``kind``, calling its hook on every plugin the first time."""
        if self._strict and self._failures:
            # A strict host stays broken: never answer from a partly loaded set of plugins.
            raise PluginError(self._failures[0].message)
        if kind not in self._registries:
            pm = self._plugin_manager()
            registry: dict[str, Component] = {}
            for record, impl in self._impls(pm, _HOOKS[kind]):
                self._call_hook(kind, record, impl, registry)
            self._registries[kind] = registry
        return self._registries[kind]

    def _impls(
        self, pm: pluggy.PluginManager, hook_name: str
    ) -> Iterator[tuple[_Plugin, pluggy.HookImpl]]:
        """Implementations of ``hook_name`` in load order, so the first registration wins."""
        order = {p.name: i for i, p in enumerate(self._plugins)}
        impls = sorted(
            getattr(pm.hook, hook_name).get_hookimpls(),
            key=lambda impl: order.get(impl.plugin_name, len(order)),
        )
        for impl in impls:
            yield self._plugins[order[impl.plugin_name]], impl

    def _call_hook(
        self,
        kind: ComponentKind,
        record: _Plugin,
        impl: pluggy.HookImpl,
        registry: dict[str, Component],
    ) -> None:
        """Call one plugin's hook and keep what it registered, all or nothing if it raises."""
        hook_name = _HOOKS[kind]
        if impl.hookwrapper or impl.wrapper:
            self._fail(
                record,
                f"declares {hook_name} as a hook wrapper, which mamlflow does not support; "
                f"drop wrapper=True/hookwrapper=True in the plugin, or {record.fix}",
            )
            return
        staged: list[Component] = []
        problems: list[str] = []

        def keep(name: object, obj: Any) -> None:
            problem = _validate(kind, name, obj)
            if problem is None:
                staged.append(
                    Component(
                        kind,
                        cast(str, name),
                        obj,
                        record.source,
                        _doc(obj),
                        record.dist,
                        record.version,
                    )
                )
            else:
                problems.append(
                    f"registered {_describe(obj)} as a {_LABELS[kind][0]}, but {problem}; "
                    f"it is ignored — fix the plugin, or {record.fix}"
                )

        def register(obj: Any) -> None:
            keep(obj.name if isinstance(obj, Preset) else getattr(obj, "name", None), obj)

        def register_command(name: str, obj: Any) -> None:
            keep(name, obj)

        callback = register_command if kind == "command" else register
        try:
            impl.function(**{arg: callback for arg in impl.argnames})
        except Exception as exc:
            self._fail(
                record,
                f"raised {_exc_text(exc)} in {hook_name}, so none of its {_LABELS[kind][1]} "
                f"are available; {record.fix}",
            )
            return
        for component in staged:
            first = registry.get(component.name)
            if first is None:
                registry[component.name] = component
            else:
                problems.append(
                    f"registers a {_LABELS[kind][0]} '{component.name}' that duplicates the one "
                    f"from {first.source}; the first one is kept — {record.rename_fix}"
                )
        for problem in problems:
            self._fail(record, problem)

    def _fail(self, record: _Plugin, problem: str) -> None:
        """Report one problem of one plugin: a one-line warning, or ``PluginError`` if strict."""
        message = _one_line(f"mamlflow: {record.who} {problem}")
        # Registries are rebuilt after add_plugin(); the same problem is reported only once.
        if all(f.message != message for f in self._failures):
            self._failures.append(
                PluginFailure(record.name, record.source, message, record.dist, record.version)
            )
            if not self._strict:
                # A fixed location keeps the printed warning to one line (no source line).
                warnings.warn_explicit(
                    message, PluginWarning, filename="mamlflow", lineno=0, module=__name__
                )
        if self._strict:
            raise PluginError(message)


_host: PluginHost | None = None


def get_host() -> PluginHost:
    """The process-wide host, created (not loaded) on first call."""
    global _host
    if _host is None:
        _host = PluginHost()
    return _host


def reset_host() -> None:
    """Forget the process-wide host, e.g. after a test changed the environment."""
    global _host
    _host = None


# -- helpers -------------------------------------------------------------------------------------


def _env_flag(name: str, *, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    return value not in {"0", "false", "no", "off"}


def _check_kind(kind: str) -> ComponentKind:
    if kind not in _KINDS:
        raise ValueError(f"unknown component kind {kind!r}; expected one of {', '.join(_KINDS)}")
    return cast(ComponentKind, kind)


def _entry_points() -> list[EntryPoint]:
    """Installed ``mamlflow`` entry points, sorted so duplicate names resolve the same way."""
    eps = entry_points(group=ENTRY_POINT_GROUP)
    return sorted(eps, key=lambda ep: (ep.dist.name if ep.dist is not None else "", ep.name))


def _validate(kind: ComponentKind, name: object, obj: Any) -> str | None:
    """Why ``obj`` cannot be registered as a ``kind`` named ``name``, or ``None`` if it can."""
    if kind in _CLASS_KINDS:
        base, config_base = _CLASS_KINDS[kind]
        if not (isinstance(obj, type) and issubclass(obj, base)):
            return f"it is not a subclass of {base.__name__}"
        if inspect.isabstract(obj):
            missing = ", ".join(sorted(getattr(obj, "__abstractmethods__", ())))
            return f"it is abstract (implement {missing})"
        if config_base is not None:
            config = getattr(obj, "Config", None)
            if not (isinstance(config, type) and issubclass(config, config_base)):
                return f"its Config is not a subclass of {config_base.__name__}"
    elif kind == "preset":
        if not isinstance(obj, Preset):
            return "it is not a Preset"
        if not isinstance(obj.values, Mapping):
            return "its values are not a mapping"
    elif kind == "command" and not callable(obj):
        return "it is not callable (pass a typer.Typer app or a function)"
    if not isinstance(name, str) or not name or name != name.strip() or " " in name:
        return f"its name {name!r} is not a non-empty string without spaces"
    return None


def _unknown_hooks(pm: pluggy.PluginManager, plugin: object) -> list[str]:
    """Names of the hooks ``plugin`` implements that no hookspec declares."""
    return sorted(
        caller.name
        for caller in pm.get_hookcallers(plugin) or ()
        if not caller.has_spec()
        and any(i.plugin is plugin and not i.optionalhook for i in caller.get_hookimpls())
    )


def _describe_unknown_hooks(unknown: list[str]) -> str:
    known = sorted(_HOOKS.values())
    parts = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1)
        parts.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    noun = "hook" if len(parts) == 1 else "hooks"
    return f"unknown {noun} {', '.join(parts) or '(unknown)'}"


def _unknown_name_message(kind: ComponentKind, name: str, available: list[str]) -> str:
    close = difflib.get_close_matches(name, available, n=1)
    did_you_mean = f" Did you mean '{close[0]}'?" if close else ""
    listed = ", ".join(available) if available else "none"
    return (
        f"Unknown {_LABELS[kind][0]} '{name}'.{did_you_mean} Available: {listed}. "
        "Run 'metaflow plugins' to list components "
        "or 'metaflow plugins install <package>' to add one."
    )


def _doc(obj: Any) -> str:
    """A one-line description: ``description`` if set, else the first line of its own docstring."""
    if isinstance(obj, Preset):
        return _one_line(obj.description)
    description = getattr(obj, "description", "") if isinstance(obj, type) else ""
    if isinstance(description, str) and description:
        return _one_line(description)
    doc = obj.__doc__ if isinstance(obj, type) or inspect.isroutine(obj) else None
    return _one_line(inspect.cleandoc(doc).split("\n", 1)[0]) if doc else ""


def _describe(obj: Any) -> str:
    """A short name for ``obj`` in a message: the class path, or type and repr."""
    if isinstance(obj, type):
        return f"class {obj.__module__}.{obj.__qualname__}"
    return f"{type(obj).__name__} {_truncate(repr(obj))}"


def _exc_text(exc: BaseException) -> str:
    return _truncate(f"{type(exc).__name__}: {exc}")


def _truncate(text: str) -> str:
    text = _one_line(text)
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 1] + "…"


def _one_line(text: str) -> str:
    return " ".join(text.split())
