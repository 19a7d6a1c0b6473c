"""``metaflow config``: the resolved configuration of a preset, with where each value comes from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.table import Table

from mamlflow.core.config import config_schema, resolve
from mamlflow.core.host import get_host

from ._common import console

__all__ = ["config"]


def config(
    plugin: Annotated[str, typer.Option("--plugin", "-p", help="preset name, e.g. sinusoid")],
    config_file: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML, YAML or JSON config file")
    ] = None,
    sets: Annotated[
        list[str] | None, typer.Option("--set", "-s", help="override: dotted.key=value")
    ] = None,
    explain: Annotated[
        bool, typer.Option("--explain", help="table of every key: value, source, description")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of YAML")] = False,
) -> None:
    """Print the resolved configuration a run with these options would use."""
    host = get_host()
    resolved = resolve(host, preset=plugin, file=config_file, sets=sets or ())
    values = resolved.config.model_dump(mode="json")
    if as_json:
        print(json.dumps(values, indent=2))
        return
    if not explain:
        print(yaml.safe_dump(values, sort_keys=False), end="")
        return
    docs = {row.key: row.description for row in config_schema(host, plugin)}
    table = Table(title=f"config for --plugin {plugin}")
    for column in ("key", "value", "source", "description"):
        table.add_column(column)
    for key, source in resolved.provenance.items():
        value: object = values
        for part in key.split("."):
            value = value[part] if isinstance(value, dict) else value
        table.add_row(key, json.dumps(value), source, docs.get(key, ""))
    console.print(table)
