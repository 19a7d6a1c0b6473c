"""Builds the Typer app: the built-in command groups plus commands registered by plugins."""

from __future__ import annotations

import os
import sys

import typer

from mamlflow.core import MamlflowError

from . import _bench, _config, _deploy, _eval, _plugins, _run
from ._common import DEBUG_ENV, fail, report, setup_logging

__all__ = ["build_app", "run_app"]

HELP = (
    "mamlflow: batched, compiled Model-Agnostic Meta-Learning for PyTorch.\n\n"
    "`metaflow` and `mamlflow` are the same command; use `mamlflow` if Netflix's unrelated "
    "Metaflow is also installed."
)


def build_app(argv: list[str] | None = None) -> typer.Typer:
    """The app for ``argv`` (the arguments after the program name)."""
    app = typer.Typer(
        help=HELP,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode="rich",
    )
    app.command("run")(_run.run)
    app.command("eval")(_eval.eval_command)
    app.command("adapt")(_deploy.adapt_command)
    app.command("predict")(_deploy.predict_command)
    app.command("export")(_deploy.export_command)
    app.add_typer(_plugins.build_group(), name="plugins")
    app.command("config")(_config.config)
    app.command("bench")(_bench.bench)
    # Installing and uninstalling plugins must work while an installed plugin is broken (even in
    # strict mode, where loading it is an error), so those two never load plugins.
    if _installs_plugins(sys.argv[1:] if argv is None else argv):
        return app
    _add_plugin_commands(app)
    return app


def _installs_plugins(argv: list[str]) -> bool:
    return argv[:1] == ["plugins"] and argv[1:2] in (["install"], ["uninstall"])


def _add_plugin_commands(app: typer.Typer) -> None:
    from mamlflow.engine import get_host

    for name, command in get_host().commands().items():
        if isinstance(command, typer.Typer):
            app.add_typer(command, name=name)
        else:
            app.command(name)(command)


def run_app(argv: list[str] | None = None) -> None:
    setup_logging()
    try:
        app = build_app(argv)
        app(args=argv, prog_name=os.path.basename(_prog_name()), standalone_mode=True)
    except MamlflowError as error:
        report(error)
    except KeyboardInterrupt:
        if os.environ.get(DEBUG_ENV):
            raise
        fail(
            "interrupted; the last checkpoint in the run directory is intact "
            "(continue with --resume RUN_DIR)",
            130,
        )


def _prog_name() -> str:
    return sys.argv[0] if sys.argv and sys.argv[0] else "metaflow"
