"""Small trained runs that several test modules adapt, predict with and export (seconds each).

Session-scoped: each is trained once per test session, in its own temporary folder, and only
read afterwards.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mamlflow.engine import PluginHost, Trainer, resolve

from .navigation import SMALL


@pytest.fixture(scope="session")
def sinusoid_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sinusoid preset, 30 iterations, 3 evaluation steps."""
    run_dir = tmp_path_factory.mktemp("sinusoid") / "run"
    host = PluginHost()
    sets = ("train.iterations=30", "kernel.strategy=batched", "eval.steps=3", "device=cpu")
    Trainer(resolve(host, preset="sinusoid", sets=sets), run_dir, host).fit()
    return run_dir


@pytest.fixture(scope="session")
def navigation_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The navigation preset at the shared small sizes, 2 iterations."""
    run_dir = tmp_path_factory.mktemp("navigation") / "run"
    host = PluginHost()
    config = resolve(host, preset="navigation", sets=(*SMALL, "train.iterations=2", "device=cpu"))
    Trainer(config, run_dir, host).fit()
    return run_dir
