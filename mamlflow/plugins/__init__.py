"""Built-in plugins: registered through the same hooks a third-party package uses."""

from __future__ import annotations

__all__ = ["BUILTINS"]

BUILTINS: tuple[str, ...] = (
    "mamlflow.plugins.sinusoid",
    "mamlflow.plugins.omniglot",
    "mamlflow.plugins.mlp",
    "mamlflow.plugins.conv4",
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
"""Module paths of the built-in plugins, loaded before any entry point."""
