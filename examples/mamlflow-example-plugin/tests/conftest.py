"""Load mamlflow's plugin-testing fixtures and name the plugin they test."""

from __future__ import annotations

import pytest

import mamlflow_example_plugin.plugin

pytest_plugins = ["mamlflow.testing"]


@pytest.fixture
def mamlflow_plugin() -> object:
    return mamlflow_example_plugin.plugin
