"""Conformance checks for mamlflow plugins, and pytest fixtures to run them in a plugin's own CI.

The same checks run over every registered built-in (``tests/conformance``). Each one raises
``AssertionError`` with one line that names the component, what failed and how to fix it::

    from mamlflow.testing import check_model, check_optimizer, check_task_family

    check_task_family(Linear)              # sampling, meta-batches, objective and score
    check_model(MyNet, Linear)             # builds for the family; batched kernel == loop
    check_algorithm(MyAlgorithm)           # lowers the sinusoid loss after adaptation
    check_optimizer(MyOptimizer)           # lowers a meta-loss; resumes bitwise
    check_callback(MyCallback)             # survives a short run and a resume of it
    check_preset(host, "linear")           # resolves, trains a few steps, evaluates

Supervised and rollout (meta-RL) families go through one code path: the checks get a family's
meta-batches from the engine (``mamlflow.engine.batch_source``), which hands sampled tasks on as
they are and collects trajectories of a small policy in rollout tasks. The components the checks
run others against (sinusoid, navigation, mlp, gaussian-mlp, maml, adam) are looked up by name in
a ``PluginHost`` of those built-ins.

In a plugin package, load the fixtures from ``tests/conftest.py`` and name the plugin under test::

    import pytest

    import my_package.plugin

    pytest_plugins = ["mamlflow.testing"]


    @pytest.fixture
    def mamlflow_plugin() -> object:
        return my_package.plugin

A test that asks for ``mamlflow_host`` then gets a ``PluginHost`` with the built-ins and that
plugin (no installed entry points), checked to have registered without a problem, and removed
again afterwards.

pytest is optional here, on purpose: the checks need only torch and raise plain
``AssertionError``, which every test runner reports, so they can be called from unittest, a
script or a notebook without pytest installed. The fixtures are defined only when pytest can be
imported, which it always can when pytest itself loads this module through ``pytest_plugins``.
Importing this module loads no plugin, and ``import mamlflow`` does not import it.
"""

from __future__ import annotations

from collections.abc import Iterator

from mamlflow.engine import PluginHost

from ._algorithms import check_algorithm as check_algorithm
from ._callbacks import check_callback as check_callback
from ._families import check_task_family as check_task_family
from ._models import check_model as check_model
from ._optimizers import check_optimizer as check_optimizer
from ._presets import check_preset as check_preset

__all__ = [
    "check_algorithm",
    "check_callback",
    "check_model",
    "check_optimizer",
    "check_preset",
    "check_task_family",
]


# -- pytest fixtures -----------------------------------------------------------------------------

try:
    import pytest
except ImportError:  # the checks above work without pytest; only the fixtures need it
    pytest = None  # type: ignore[assignment]

if pytest is not None:
    __all__ += ["mamlflow_host", "mamlflow_plugin"]

    @pytest.fixture
    def mamlflow_plugin() -> object:
        """The plugin under test: override this fixture in your ``conftest.py``.

        Return the module (or any object) with your ``@hookimpl`` functions, e.g.
        ``return my_package.plugin``.
        """
        pytest.fail(
            "override the mamlflow_plugin fixture in your conftest.py: "
            "@pytest.fixture def mamlflow_plugin(): return my_package.plugin",
            pytrace=False,
        )

    @pytest.fixture
    def mamlflow_host(mamlflow_plugin: object) -> Iterator[PluginHost]:
        """A ``PluginHost`` with the built-ins and ``mamlflow_plugin``, removed afterwards.

        Installed entry points are not loaded, so other plugins cannot interfere. Every hook
        but ``register_commands`` has run and the plugin registered without a problem, or the
        test errors with the host's one-line message.
        """
        host = PluginHost(autoload=False, strict=False)
        name = getattr(mamlflow_plugin, "__name__", type(mamlflow_plugin).__name__)
        undo = host.add_plugin(mamlflow_plugin, name)
        try:
            for kind in ("task_family", "model", "algorithm", "optimizer", "preset", "callback"):
                host.names(kind)
            if host.failures:
                pytest.fail(host.failures[0].message, pytrace=False)
            yield host
        finally:
            undo()
