"""``metaflow config``: the resolved configuration of a preset, with where each value comes from."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import typer
import yaml
from rich.cells import cell_len
from rich.console import Group
from rich.table import Table
from rich.text import Text

from mamlflow.engine import config_schema, get_host, resolve

from ._common import console

__all__ = ["MIN_DESCRIPTION_WIDTH", "ExplainedKey", "config", "explain_table"]

MIN_DESCRIPTION_WIDTH = 30
"""Below this, ``--explain`` puts descriptions under their keys (a narrower one is unreadable)."""


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
    rows = [
        ExplainedKey(key, json.dumps(_lookup(values, key)), source, docs.get(key, ""))
        for key, source in resolved.provenance.items()
    ]
    console.print(explain_table(f"config for --plugin {plugin}", rows, console.width))


class ExplainedKey(NamedTuple):
    """One row of ``metaflow config --explain``."""

    key: str
    value: str
    source: str
    description: str


def explain_table(title: str, rows: Sequence[ExplainedKey], width: int) -> Table:
    """The ``--explain`` table for a terminal ``width`` columns wide.

    Keys, values and sources are never cut. Where they leave the description column fewer
    than ``MIN_DESCRIPTION_WIDTH`` columns (80-column terminals), each description goes under
    its key and each source under its value, so two columns share the width instead of four.
    """
    key_width, value_width, source_width = (
        max(cell_len(text) for text in (header, *column))
        for header, column in (
            ("key", [r.key for r in rows]),
            ("value", [r.value for r in rows]),
            ("source", [r.source for r in rows]),
        )
    )
    # Four columns take 13 columns of borders and padding; two take 7.
    if key_width + value_width + source_width + 13 + MIN_DESCRIPTION_WIDTH <= width:
        table = Table(title=title)
        for name, fixed in (("key", key_width), ("value", value_width), ("source", source_width)):
            table.add_column(name, width=fixed, no_wrap=True)
        table.add_column("description", ratio=1)
        for row in rows:
            table.add_row(*(Text(cell) for cell in row))  # text, not markup: "[metrics, csv]"
        return table
    right_header = "value / source"
    right = max(value_width, source_width, cell_len(right_header))
    table = Table(title=title)
    table.add_column("key / description", ratio=1)
    table.add_column(right_header, width=max(1, min(right, width - 7 - key_width)), overflow="fold")
    for row in rows:
        key = Text(row.key, style="bold", overflow="fold")
        left = Group(key, Text(row.description)) if row.description else key
        table.add_row(
            left,
            Group(Text(row.value, overflow="fold"), Text(row.source, style="dim", overflow="fold")),
        )
    return table


def _lookup(values: dict[str, Any], key: str) -> object:
    """The value at a dotted ``key`` of a nested dict (a key may name a whole section)."""
    value: object = values
    for part in key.split("."):
        value = value[part] if isinstance(value, dict) else value
    return value
