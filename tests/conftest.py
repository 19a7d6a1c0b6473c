"""Shared test setup: deterministic, small, and isolated from installed third-party plugins."""

from __future__ import annotations

import os

# Before mamlflow is imported anywhere: only built-in plugins, never whatever is installed.
os.environ.setdefault("MAMLFLOW_AUTOLOAD_PLUGINS", "0")

import pytest
import torch

# The small navigation runs (and their ``host`` fixture) several packages' RL tests share, and
# the small trained runs the deploy tests adapt.
pytest_plugins = ["tests.navigation", "tests.trained_runs"]

# MAMLFLOW_TEST_THREADS=1 keeps parallel test runs from preempting each other inside matmuls.
torch.set_num_threads(int(os.environ.get("MAMLFLOW_TEST_THREADS", min(2, os.cpu_count() or 1))))


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA: run benchmarks/gpu_check.sh on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
