"""The results tables of docs/results.md are the JSON their scripts wrote, rendered.

A table produced by a script sits between ``<!-- table: NAME -->`` and ``<!-- /table -->``; its
JSON is ``docs/results/NAME.json``, which names the script under ``benchmarks/`` that wrote it
(``paper_tables.py``, ``sinusoid_protocols.py``); the script's ``render`` turns the JSON into the
Markdown the page must hold, character for character.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "results.md"
TABLES = ROOT / "docs" / "results"
_BLOCK = re.compile(r"<!-- table: (\w+) -->\n(.*?)<!-- /table -->", re.S)


def _script(path: str = "benchmarks/paper_tables.py") -> ModuleType:
    spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _blocks() -> dict[str, str]:
    return {name: body for name, body in _BLOCK.findall(RESULTS.read_text())}


def test_every_scripted_table_has_its_json_and_every_json_its_table() -> None:
    names = {path.stem for path in TABLES.glob("*.json")}
    assert set(_blocks()) == names, "a table without JSON, or JSON without its table"
    assert names >= {"sinusoid", "navigation"}


@pytest.mark.parametrize("name", sorted(p.stem for p in TABLES.glob("*.json")))
def test_a_table_is_its_json_rendered(name: str) -> None:
    report = json.loads((TABLES / f"{name}.json").read_text())
    assert report["table"] == name
    rendered = _script(report["script"]).render(report)
    assert _blocks()[name].strip() == rendered.strip(), (
        f"docs/results.md's {name} table differs from docs/results/{name}.json; paste the "
        f"output of `python {report['script']} --render` (with the table's name for "
        "paper_tables.py)"
    )


@pytest.mark.parametrize("name", ["sinusoid", "navigation"])
def test_the_paper_tables_have_five_seeds(name: str) -> None:
    report = json.loads((TABLES / f"{name}.json").read_text())
    assert report["seeds"] == [0, 1, 2, 3, 4]
    assert all(len(seeds) == 5 for row in report["by_shots"].values() for seeds in row["per_seed"])


def test_a_changed_number_is_caught() -> None:
    report = json.loads((TABLES / "sinusoid.json").read_text())
    report["by_shots"]["5"]["mean"][1] += 0.01
    assert _script().render(report).strip() != _blocks()["sinusoid"].strip()
