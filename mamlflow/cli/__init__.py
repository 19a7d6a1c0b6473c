"""The ``metaflow`` / ``mamlflow`` command line (Typer). Nothing runs at import."""

from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console scripts: run the app, turning user errors into one line."""
    from ._app import run_app

    run_app(argv)
