"""The README: the set-up contract, its length, and a Python run the CLI can evaluate and resume.

Every Python block runs in ``test_snippets.py``; here the README's snippet is also followed
through what the README says next: ``metaflow eval RUN_DIR --json`` and
``metaflow run --resume RUN_DIR --set train.iterations=N`` on the directory it wrote.
"""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import pytest

from mamlflow import load_checkpoint
from mamlflow.cli import main

from ._markdown import README, blocks

TEXT = README.read_text(encoding="utf-8")


def _setup() -> str:
    return TEXT.split("## Set up", 1)[1].split("\n## ", 1)[0]


def test_setup_commands_are_the_contract() -> None:
    first_block = re.search(r"```bash\n(.*?)```", _setup(), flags=re.S)
    assert first_block is not None
    assert first_block.group(1).split("\n")[:2] == ['pip install -e ".[dev]"', "pytest"]


def test_setup_names_a_plain_install_and_the_cpu_wheel_index() -> None:
    commands = [
        line.split("#")[0].strip()
        for block in re.findall(r"```bash\n(.*?)```", _setup(), flags=re.S)
        for line in block.splitlines()
    ]
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in commands
    assert "pip install -e ." in commands


def test_readme_is_at_most_200_lines() -> None:
    assert len(TEXT.splitlines()) <= 200


def test_readme_says_metaflow_and_mamlflow_are_one_program() -> None:
    assert "### `metaflow` or `mamlflow`?" in TEXT
    assert "`mamlflow`" in TEXT.split("### `metaflow` or `mamlflow`?", 1)[1].split("\n## ", 1)[0]


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``metaflow ARGV`` in this process; return its standard output."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    assert exit_info.value.code in (0, None), f"metaflow {' '.join(argv)}:\n{captured.err}"
    return captured.out


def test_the_python_snippet_writes_a_run_the_cli_evaluates_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (snippet,) = [b for b in blocks(README) if b.language == "python"]
    assert len(snippet.code.strip().splitlines()) <= 10, "the quickstart's Python is ≤ 10 lines"
    run_dir = re.search(r'Path\("([^"]+)"\)', snippet.code)
    assert run_dir is not None, "the snippet names its run directory with Path(...)"
    run = run_dir.group(1)
    # The commands the README gives for that directory are the ones run below.
    assert f"`metaflow eval {run} --json`" in TEXT
    resume = re.search(rf"`metaflow run --resume {run} --set train\.iterations=(\d+)`", TEXT)
    assert resume is not None

    monkeypatch.chdir(tmp_path)
    module = types.ModuleType("readme_snippet")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(snippet.code, snippet.id, "exec"), module.__dict__)
    printed = capsys.readouterr().out
    trained = load_checkpoint(tmp_path / run).iteration
    assert f"{trained} iterations, meta-loss" in printed, printed

    result = json.loads(_cli(["eval", run, "--json"], capsys))
    per_shot = result.get("results", [result])
    assert result["metric"] == "mse" and per_shot, result
    for one in per_shot:
        assert one["steps"][0] == 0 and len(one["mean"]) == len(one["steps"]), one
    assert (tmp_path / run / "eval.json").is_file()

    more = trained + 20  # the README continues to 400; 20 more iterations show the same
    _cli(["run", "--resume", run, "--set", f"train.iterations={more}"], capsys)
    assert load_checkpoint(tmp_path / run).iteration == more
    records = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").open()]
    assert records[-1]["iteration"] == more
