"""Helpers shared by the command modules: consoles, error reporting, plugin warnings."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any, NoReturn

from rich.console import Console
from rich.markup import escape

from mamlflow.core import MamlflowError

__all__ = ["DEBUG_ENV", "console", "err_console", "fail", "logs_through", "setup_logging"]

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
    from mamlflow.engine import PluginWarning

    if issubclass(category, PluginWarning):
        err_console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


class _LogLines(logging.Handler):
    """mamlflow's log records as plain lines on a console: stderr, or a live display's."""

    def __init__(self, out: Console) -> None:
        super().__init__()
        self.out = out
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            self.out.print(line, markup=False, emoji=False, highlight=False, soft_wrap=True)
        except Exception:
            self.handleError(record)


def setup_logging() -> None:
    warnings.showwarning = _show_warning
    logger = logging.getLogger("mamlflow")
    if not logger.handlers:
        logger.addHandler(_LogLines(err_console))
    logger.setLevel(logging.INFO)


@contextlib.contextmanager
def logs_through(out: Console) -> Iterator[None]:
    """Print mamlflow's log lines through ``out`` for a while (a live progress bar's console).

    A line written straight to the terminal while a bar is live lands inside the bar and breaks
    it; through the bar's console it is printed once, above the bar.
    """
    handlers = [h for h in logging.getLogger("mamlflow").handlers if isinstance(h, _LogLines)]
    previous = [h.out for h in handlers]
    for handler in handlers:
        handler.out = out
    try:
        yield
    finally:
        for handler, before in zip(handlers, previous, strict=True):
            handler.out = before
