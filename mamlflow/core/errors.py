"""The exceptions mamlflow raises on bad input.

Every error carries a one-line message that says what is wrong and how to fix it; the CLI prints
``str(error)`` and exits non-zero without a traceback (set ``MAMLFLOW_DEBUG=1`` to see one).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "MamlflowError",
    "NonFiniteError",
    "PluginError",
    "ResourceError",
    "UnknownNameError",
]


class MamlflowError(Exception):
    """Base class: a user-facing error with an exit code for the CLI."""

    exit_code: int = 1


class ConfigError(MamlflowError):
    """A configuration value is invalid; ``issues`` holds one line per bad key.

    ``ConfigError("task.ways: must be at most 20")`` for one problem, or a list of such lines.
    """

    exit_code = 2

    def __init__(self, issues: str | Sequence[str]) -> None:
        self.issues = [issues] if isinstance(issues, str) else [str(i) for i in issues]
        super().__init__("\n".join(self.issues))


class PluginError(MamlflowError):
    """A plugin failed to load or registered something invalid."""


class UnknownNameError(MamlflowError):
    """A component name that no plugin registered."""

    exit_code = 2


class DataError(MamlflowError):
    """Data is missing, corrupt, or in the wrong place."""


class CheckpointError(MamlflowError):
    """A checkpoint or run directory cannot be used."""


class NonFiniteError(MamlflowError):
    """Training produced NaN or inf: the run stops and keeps its last good checkpoint."""


class ResourceError(MamlflowError):
    """The machine lacks what a run needs: memory for its model or batch, or disk space."""
