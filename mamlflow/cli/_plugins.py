"""``metaflow plugins``: every registered component, where it came from, and what failed."""

from __future__ import annotations

import json
from typing import Annotated, get_args

import typer
from rich.table import Table

from mamlflow.core.host import ComponentKind, get_host

from ._common import console

__all__ = ["plugins"]


def plugins(
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """List task families, models, algorithms, optimizers, presets, callbacks and commands."""
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
                            "description": c.description,
                        }
                        for c in components
                    ],
                    "failures": [
                        {"plugin": f.plugin, "source": f.source, "message": f.message}
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
        table.add_row(c.kind, c.name, c.source, c.description)
    console.print(table)
    for f in failures:
        console.print(f"[red]failed:[/] {f.message}", highlight=False)
