"""``metaflow plugins``: every registered component and what failed; ``install``/``uninstall``.

``install`` and ``uninstall`` are thin wrappers over pip run by mamlflow's own interpreter
(``sys.executable -m pip``), so a plugin always lands in the environment that loads it, whichever
virtualenv, pipx or conda install the ``metaflow`` on ``PATH`` belongs to (as ``llm install``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from importlib.metadata import PackageNotFoundError, distribution
from importlib.util import find_spec
from pathlib import Path
from typing import Annotated, Any, get_args

import typer
from rich.markup import escape
from rich.table import Table

from mamlflow.engine import (
    AUTOLOAD_ENV,
    STRICT_ENV,
    Component,
    ComponentKind,
    PluginFailure,
    get_host,
)

from ._common import console, err_console, fail

__all__ = ["build_group", "install", "plugins", "uninstall"]

HELP = (
    "List task families, models, algorithms, optimizers, presets, callbacks and commands, or "
    "install and uninstall plugin packages with pip."
)


def build_group() -> typer.Typer:
    """``metaflow plugins``: lists components when called alone, else runs a subcommand."""
    group = typer.Typer(
        help=HELP,
        invoke_without_command=True,
        no_args_is_help=False,
        add_completion=False,
        rich_markup_mode="rich",
    )
    group.callback()(plugins)
    group.command("install")(install)
    group.command("uninstall")(uninstall)
    return group


def plugins(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """List task families, models, algorithms, optimizers, presets, callbacks and commands."""
    if ctx.invoked_subcommand is not None:
        if as_json:
            fail(f"--json lists components; use `metaflow plugins {ctx.invoked_subcommand}` alone")
        return
    host = get_host()
    kinds: tuple[ComponentKind, ...] = get_args(ComponentKind)
    components = [c for kind in kinds for c in host.components(kind)]
    failures = host.failures
    if as_json:
        print(
            json.dumps(
                {
                    "components": [
                        {
                            "kind": c.kind,
                            "name": c.name,
                            "source": c.source,
                            "distribution": _distribution(c),
                            "description": c.description,
                        }
                        for c in components
                    ],
                    "failures": [
                        {
                            "plugin": f.plugin,
                            "source": f.source,
                            "distribution": _distribution(f),
                            "message": f.message,
                        }
                        for f in failures
                    ],
                },
                indent=2,
            )
        )
        return
    table = Table(title="mamlflow components")
    for column in ("kind", "name", "source", "description"):
        table.add_column(column)
    for c in components:
        # Escaped: a plugin's name or description is text, not rich markup.
        table.add_row(*(escape(text) for text in (c.kind, c.name, c.source, c.description)))
    console.print(table)
    for f in failures:
        console.print(f"[red]failed:[/] {escape(f.message)}", highlight=False)


def install(
    packages: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="PACKAGE",
            help="what pip installs: a name from the index, a requirement, a path or a URL",
            show_default=False,
        ),
    ] = None,
    upgrade: Annotated[
        bool, typer.Option("-U", "--upgrade", help="upgrade to the newest version")
    ] = False,
    editable: Annotated[
        list[str] | None,
        typer.Option(
            "-e",
            "--editable",
            metavar="PATH",
            help="install a local project in editable mode (repeatable)",
            show_default=False,
        ),
    ] = None,
    force_reinstall: Annotated[
        bool, typer.Option("--force-reinstall", help="reinstall even if up to date")
    ] = False,
    no_cache_dir: Annotated[
        bool, typer.Option("--no-cache-dir", help="do not use or fill pip's cache")
    ] = False,
    pre: Annotated[
        bool, typer.Option("--pre", help="consider pre-release and development versions")
    ] = False,
) -> None:
    """Install plugin packages with pip into mamlflow's environment, then list what they add."""
    packages = packages or []
    editable = editable or []
    if not packages and not editable:
        fail("name a package to install, e.g. `metaflow plugins install mamlflow-foo` or `-e .`")
    options = [
        flag
        for flag, wanted in (
            ("--upgrade", upgrade),
            ("--force-reinstall", force_reinstall),
            ("--no-cache-dir", no_cache_dir),
            ("--pre", pre),
        )
        if wanted
    ]
    targets = [*(arg for path in editable for arg in ("--editable", path)), *packages]
    with tempfile.TemporaryDirectory(prefix="mamlflow-pip-") as tmp:
        # pip's install report names what it really installed, whatever form the request took
        # (a path, a URL, an extra), which is how the new distribution's components are found.
        report_path = Path(tmp) / "report.json"
        _pip("install", *options, "--report", str(report_path), *targets)
        report = json.loads(report_path.read_text())
    installed = {
        _canonical(item["metadata"]["name"]): (
            item["metadata"]["name"],
            item["metadata"]["version"],
            bool(item.get("requested")),
        )
        for item in report.get("install", [])
    }
    if installed:
        _report_installed(installed)


def uninstall(
    packages: Annotated[
        list[str],
        typer.Argument(
            metavar="PACKAGE",
            help="distribution names, as the `distribution` of `metaflow plugins --json`",
            show_default=False,
        ),
    ],
    yes: Annotated[bool, typer.Option("-y", "--yes", help="do not ask for confirmation")] = False,
) -> None:
    """Uninstall plugin packages with pip from mamlflow's environment."""
    names = [_requirement_name(spec) for spec in packages]
    if "mamlflow" in {_canonical(name) for name in names}:
        fail(
            "refusing to uninstall mamlflow itself with `metaflow plugins uninstall`, which "
            "removes plugins; run `python -m pip uninstall mamlflow` if you mean it"
        )
    described = []
    for name in names:
        try:
            installed = distribution(name)
        except PackageNotFoundError:
            fail(
                f"'{name}' is not installed in mamlflow's environment ({sys.prefix}); "
                "`metaflow plugins --json` shows each component's distribution"
            )
        described.append(f"{installed.metadata['Name']} {installed.version}")
    if not yes:
        typer.confirm(f"Uninstall {', '.join(described)} from {sys.prefix}?", abort=True)
    _pip("uninstall", "--yes", *packages)


# -- helpers -------------------------------------------------------------------------------------


def _pip(command: str, *args: str) -> None:
    """Run ``python -m pip COMMAND ARGS`` with pip's own output; one error line if it fails."""
    if find_spec("pip") is None:
        fail(
            f"pip is not installed in mamlflow's environment ({sys.executable}); "
            f"add it with `{sys.executable} -m ensurepip`",
            1,
        )
    # pip explains its own failures above (a build's output can be long and is the clue), so
    # mamlflow adds one line and passes on pip's exit status.
    status = subprocess.run([sys.executable, "-m", "pip", command, *args]).returncode
    if status != 0:
        fail(
            f"pip {command} failed (exit status {status}); pip's messages above say why",
            status,
        )


def _report_installed(installed: dict[str, tuple[str, str, bool]]) -> None:
    """Print what the new distributions register, as a fresh ``metaflow`` process sees them.

    A fresh process, not this one: an editable install is a new ``.pth`` file, which only a new
    interpreter reads. ``-P`` keeps the current directory (often the plugin's source tree) off
    ``sys.path``, so the listing imports the installed copy.
    """
    env = {**os.environ, AUTOLOAD_ENV: "1", STRICT_ENV: "0"}
    listing = subprocess.run(
        [sys.executable, "-P", "-m", "mamlflow", "plugins", "--json"],
        capture_output=True,
        text=True,
        env=env,
    )
    try:
        listed: dict[str, Any] = json.loads(listing.stdout)
    except json.JSONDecodeError:
        last = (listing.stderr.strip().splitlines() or ["no output"])[-1]
        fail(f"installed, but `metaflow plugins` failed afterwards: {last}", 1)
    failures = [f for f in listed["failures"] if _from(f, set(installed))]
    for key, (name, dist_version, requested) in installed.items():
        added = [
            f"{c['kind'].replace('_', ' ')} '{c['name']}'"
            for c in listed["components"]
            if _from(c, {key})
        ]
        if added:
            what = escape(", ".join(added))
            console.print(
                f"{name} {dist_version} registers: {what}", highlight=False, soft_wrap=True
            )
        elif requested and not any(_from(f, {key}) for f in failures):
            console.print(
                f"{name} {dist_version} registers no mamlflow component",
                highlight=False,
                soft_wrap=True,
            )
    host = get_host()
    for f in failures:
        label = "[bold red]error:[/]" if host.strict else "[yellow]warning:[/]"
        err_console.print(f"{label} {escape(f['message'])}", highlight=False, soft_wrap=True)
    if failures and host.strict:
        raise SystemExit(1)
    if not host.autoload:
        err_console.print(
            f"[yellow]warning:[/] {AUTOLOAD_ENV}=0 is set, so mamlflow loads no installed "
            "plugin until it is unset",
            highlight=False,
            soft_wrap=True,
        )


def _distribution(item: Component | PluginFailure) -> dict[str, str | None] | None:
    if item.distribution is None:
        return None
    return {"name": item.distribution, "version": item.version}


def _from(listed: dict[str, Any], dists: set[str]) -> bool:
    """Whether a listed component or failure comes from one of ``dists`` (canonical names)."""
    distribution = listed.get("distribution")
    return distribution is not None and _canonical(distribution["name"]) in dists


def _canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): ``Mamlflow_Foo`` is ``mamlflow-foo``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(spec: str) -> str:
    """The distribution name in a requirement such as ``mamlflow-foo==1.0``."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
    if match is None:
        fail(f"'{spec}' is not a distribution name; `metaflow plugins --json` lists them")
    return match.group(1)
