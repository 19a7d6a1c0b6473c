"""README snippets are tested: the set-up contract and the Python embedding example."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def test_setup_commands_are_the_contract() -> None:
    setup = README.read_text().split("## Set up", 1)[1]
    first_block = re.search(r"```bash\n(.*?)```", setup, flags=re.S)
    assert first_block is not None
    assert first_block.group(1).split("\n")[:2] == ['pip install -e ".[dev]"', "pytest"]


def test_python_snippets_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    snippets = _blocks("python")
    assert snippets, "README has no Python example"
    for code in snippets:
        exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out
    match = re.search(r"before adaptation ([\d.]+), after one step ([\d.]+)", out)
    assert match is not None, out
    assert float(match.group(2)) < float(match.group(1))
    assert (tmp_path / "runs" / "embedded" / "checkpoint.pt").is_file()
