"""docs/plugins.md is a tested file: every hook is documented with its exact signature and has a
test, and the tutorial's package is written out from its code blocks, tested and run.

Hooks are found by introspection (the ``mamlflow_spec`` marker pluggy puts on each hookspec), so a
new hook fails here until ``docs/plugins.md`` lists it and some test registers through it.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import Tensor

import mamlflow.testing
from mamlflow.core import hookspecs
from mamlflow.core.host import PluginHost
from mamlflow.core.task import TaskBatch

ROOT = Path(__file__).resolve().parents[1]
PLUGINS_MD = ROOT / "docs" / "plugins.md"
TESTS = ROOT / "tests"
SPEC_MARKER = f"{hookspecs.PROJECT}_spec"
TUTORIAL = "## Tutorial: a task family in a package of its own"
PACKAGE = "mamlflow_linear"


class _Annotation(str):
    """A string annotation that ``inspect`` renders without quotes."""

    def __repr__(self) -> str:
        return str(self)


def _hooks() -> dict[str, Callable[..., object]]:
    return {
        name: obj
        for name, obj in vars(hookspecs).items()
        if inspect.isfunction(obj) and hasattr(obj, SPEC_MARKER)
    }


def _signature(fn: Callable[..., object]) -> str:
    """``name(arg: Annotation) -> Return``, exactly as written in the source."""
    sig = inspect.signature(fn)
    params = [p.replace(annotation=_Annotation(p.annotation)) for p in sig.parameters.values()]
    sig = sig.replace(parameters=params, return_annotation=_Annotation(sig.return_annotation))
    return f"{fn.__name__}{sig}"


def _section(heading: str) -> str:
    """The text under a ``## `` heading of docs/plugins.md, up to the next one."""
    text = PLUGINS_MD.read_text(encoding="utf-8")
    assert f"\n{heading}\n" in text, f"docs/plugins.md has no '{heading}' section"
    return text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]


HOOKS = _hooks()


def test_hooks_are_found() -> None:
    assert "register_task_families" in HOOKS
    assert _signature(HOOKS["register_task_families"]) == (
        "register_task_families(register: Callable[[type[TaskFamily]], None]) -> None"
    )


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_hook_is_documented_with_its_exact_signature(name: str) -> None:
    lines = {line.strip() for line in _section("## Hooks").splitlines()}
    assert _signature(HOOKS[name]) in lines, f"docs/plugins.md lacks `{_signature(HOOKS[name])}`"


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_hook_is_tested(name: str) -> None:
    this = Path(__file__).resolve()
    testing = [
        path.relative_to(ROOT)
        for path in sorted(TESTS.rglob("*.py"))
        if path.resolve() != this and name in path.read_text(encoding="utf-8")
    ]
    assert testing, f"no test in tests/ mentions the hook {name}"


def test_docs_describe_no_hook_that_does_not_exist() -> None:
    headings = re.findall(r"^### `(\w+)`$", _section("## Hooks"), re.M)
    assert sorted(headings) == sorted(HOOKS)


@pytest.mark.parametrize("name", [n for n in mamlflow.testing.__all__ if n.startswith("check_")])
def test_every_check_is_documented_with_its_exact_signature(name: str) -> None:
    lines = {
        line.strip() for line in _section("## Testing plugins: `mamlflow.testing`").splitlines()
    }
    signature = _signature(getattr(mamlflow.testing, name))
    assert signature in lines, f"docs/plugins.md lacks `{signature}`"


def test_no_file_refers_to_the_old_hooks_page() -> None:
    assert not (ROOT / "docs" / "hooks.md").exists()
    for path in (ROOT / "README.md", ROOT / "mamlflow" / "core" / "hookspecs.py"):
        assert "hooks.md" not in path.read_text(encoding="utf-8"), path


# -- the tutorial, as the package it describes ---------------------------------------------------


def _tutorial() -> tuple[dict[str, str], list[str]]:
    """The files the tutorial writes (``# path`` first lines, ``(continued)`` appends) and the
    Python programs it runs (blocks without a path)."""
    files: dict[str, str] = {}
    programs: list[str] = []
    for language, code in re.findall(r"```(\w+)\n(.*?)```", _section(TUTORIAL), re.S):
        first = code.split("\n", 1)[0]
        match = re.fullmatch(r"# ([\w./-]+\.(?:py|toml))( \(continued\))?", first)
        if match is not None:
            path, continued = match.groups()
            assert bool(continued) == (path in files), f"{path}: '(continued)' out of place"
            files[path] = files.get(path, "") + ("\n\n" if continued else "") + code
        elif language == "python":
            programs.append(code)
    return files, programs


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The tutorial's package written to a folder, its ``src`` on ``sys.path``."""
    root = tmp_path_factory.mktemp("mamlflow-linear")
    files, _ = _tutorial()
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text, encoding="utf-8")
    sys.path.insert(0, str(root / "src"))
    try:
        yield root
    finally:
        sys.path.remove(str(root / "src"))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


@pytest.fixture(scope="module")
def plugin(tutorial: Path) -> ModuleType:
    import importlib

    return importlib.import_module(f"{PACKAGE}.plugin")


def test_the_tutorial_writes_the_whole_package() -> None:
    files, programs = _tutorial()
    assert sorted(files) == [
        "pyproject.toml",
        "src/mamlflow_linear/__init__.py",
        "src/mamlflow_linear/plugin.py",
        "tests/conftest.py",
        "tests/test_plugin.py",
    ]
    assert len(programs) == 1
    # The layout it shows names every file it writes.
    layout = re.search(r"```text\nmamlflow-linear/\n(.*?)```", _section(TUTORIAL), re.S)
    assert layout is not None
    assert {line.split()[0] for line in layout.group(1).splitlines()} == set(files)


def test_the_packaging_exposes_the_module_under_the_entry_point_group(tutorial: Path) -> None:
    project = tomllib.loads((tutorial / "pyproject.toml").read_text())["project"]
    assert project["name"] == "mamlflow-linear" and "mamlflow" in project["dependencies"]
    (target,) = project["entry-points"]["mamlflow"].values()
    assert (tutorial / "src" / (target.replace(".", "/") + ".py")).is_file()


def test_the_plugin_registers_the_family_and_the_preset(plugin: ModuleType) -> None:
    host = PluginHost(builtins=(), autoload=False)
    undo = host.add_plugin(plugin, "linear")
    assert host.failures == []
    assert host.names("task_family") == ["linear"]
    assert host.preset("linear").values["task"] == {"name": "linear", "shots": 5}
    undo()
    assert host.names("task_family") == []


def test_the_documented_failure_message_is_what_the_check_says(plugin: ModuleType) -> None:
    class ByPosition(plugin.Linear):  # type: ignore[name-defined, misc]
        """The tutorial's family with the bug the docs show: randomness keyed by position."""

        def sample(
            self, seed: int, iteration: int, task_indices: Tensor, **kw: object
        ) -> TaskBatch:
            by_position = torch.arange(len(task_indices))
            b = super().sample(seed, iteration, by_position, **kw)
            return TaskBatch(b.support, b.query, task_indices.clone(), b.info)

    documented = re.search(r"```text\nAssertionError: (.*?)\n```", _section(TUTORIAL), re.S)
    assert documented is not None
    with pytest.raises(AssertionError) as info:
        mamlflow.testing.check_task_family(ByPosition)
    assert str(info.value) == documented.group(1)


def test_the_tutorial_tests_pass_with_pytest(tutorial: Path) -> None:
    # One thread: the tutorial's model is too small to split, and on a busy CI machine OpenMP's
    # spin-waits over more threads than free cores made the run several times slower.
    env = {**os.environ, "PYTHONPATH": str(tutorial / "src"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=tutorial,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout, result.stdout


def test_the_tutorial_program_trains_and_adaptation_helps(
    plugin: ModuleType,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    (program,) = _tutorial()[1]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the subprocess above
    try:
        exec(compile(program, str(PLUGINS_MD), "exec"), {"__name__": "__docs__"})
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    pattern = r"K=5 MSE before adaptation ([\d.]+), after one step ([\d.]+)"
    printed = re.search(pattern, out)
    documented = re.search(pattern, _section(TUTORIAL))
    assert printed is not None and documented is not None, out
    before, after = map(float, printed.groups())
    assert after < 0.5 * before, out
    # What the page says it prints, up to another machine's floating-point rounding.
    for got, doc in zip(printed.groups(), documented.groups(), strict=True):
        assert float(got) == pytest.approx(float(doc), rel=0.05), (out, documented.group(0))
    assert (tmp_path / "runs" / "linear" / "checkpoint.pt").is_file()
