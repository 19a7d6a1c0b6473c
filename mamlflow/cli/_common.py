"""Helpers shared by the command modules: consoles, error reporting, plugin warnings."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Any, NoReturn

from rich.console import Console
from rich.markup import escape

from mamlflow.core.errors import MamlflowError

__all__ = ["DEBUG_ENV", "console", "err_console", "fail", "setup_logging"]

DEBUG_ENV = "MAMLFLOW_DEBUG"
console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one ``error:`` line and exit; the caller's results stay on disk untouched."""
    # Escaped: messages quote user input and commands such as pip install "mamlflow[extra]",
    # whose brackets rich would otherwise take for markup and drop.
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise SystemExit(code)


def report(error: MamlflowError) -> NoReturn:
    """One ``error:`` line per problem (a config can have several), then exit."""
    if os.environ.get(DEBUG_ENV):
        raise error
    lines = str(error).splitlines() or [type(error).__name__]
    for line in lines[:-1]:
        err_console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
    fail(lines[-1], error.exit_code)


def _show_warning(
    message: Any,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    # Plugin warnings are written for people: one line, no source location.
    from mamlflow.core.host import PluginWarning

    if issubclass(category, PluginWarning):
        err_console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def setup_logging() -> None:
    warnings.showwarning = _show_warning
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("mamlflow")
    if not logger.handlers:
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
