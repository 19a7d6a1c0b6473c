"""The pluggy hooks a mamlflow plugin implements.

Every hook hands the plugin a ``register`` callback and returns nothing; the host owns ordering,
duplicate detection and error messages. A plugin module implements any subset::

    from mamlflow import hookimpl

    @hookimpl
    def register_task_families(register):
        register(MyTaskFamily)

Expose the module under the ``mamlflow`` entry-point group of your package. ``docs/plugins.md``
walks through writing one and documents each hook with its exact signature.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .algorithm import Algorithm
    from .callbacks import Callback
    from .config import Preset
    from .learner import ModelPlugin
    from .optim import OuterOptimizer
    from .task import TaskFamily

__all__ = ["PROJECT", "hookimpl", "hookspec"]

PROJECT = "mamlflow"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_task_families(register: Callable[[type[TaskFamily]], None]) -> None:
    """Register ``TaskFamily`` subclasses: ``register(SinusoidFamily)``.

    Called once, the first time any task family is looked up.
    """


@hookspec
def register_models(register: Callable[[type[ModelPlugin]], None]) -> None:
    """Register ``ModelPlugin`` subclasses: ``register(MLP)``.

    Called once, the first time any model is looked up.
    """


@hookspec
def register_algorithms(register: Callable[[type[Algorithm]], None]) -> None:
    """Register ``Algorithm`` subclasses: ``register(MAML)``.

    Called once, the first time any algorithm is looked up.
    """


@hookspec
def register_optimizers(register: Callable[[type[OuterOptimizer]], None]) -> None:
    """Register ``OuterOptimizer`` subclasses (outer loop): ``register(Adam)``.

    Called once, the first time any outer optimizer is looked up.
    """


@hookspec
def register_presets(register: Callable[[Preset], None]) -> None:
    """Register named configurations: ``register(Preset("sinusoid", "...", {...}))``.

    Presets are what ``metaflow run --plugin NAME`` selects. Called once, on first lookup.
    """


@hookspec
def register_callbacks(register: Callable[[type[Callback]], None]) -> None:
    """Register ``Callback`` subclasses, enabled by name in ``train.callbacks``.

    Called once, the first time any callback is looked up.
    """


@hookspec
def register_commands(register: Callable[[str, Any], None]) -> None:
    """Register CLI commands: ``register("hello", typer_app_or_function)``.

    Called by the CLI only, when it builds its command tree; the core never calls it.
    """
