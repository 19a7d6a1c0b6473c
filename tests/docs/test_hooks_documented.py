"""docs/plugins.md is a tested file: every hook, every method a plugin class may override and
every conformance check is documented with its exact signature, every hook has a test, and the
tutorial's package is written out from its code blocks, tested and run.

Hooks are found by introspection (the ``mamlflow_spec`` marker pluggy puts on each hookspec), and
the classes' methods from the classes themselves, so a new hook or method fails here until
``docs/plugins.md`` shows it. Signatures are compared as syntax trees: the ``pyi`` stub in the
docs against the ``def`` in the source, so line breaks and quotes may differ, names and types
may not.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import Tensor

import mamlflow
import mamlflow.rng
import mamlflow.testing
from mamlflow import PluginHost, TaskBatch
from mamlflow.core import hookspecs

from ._markdown import ROOT, section, stubs

PLUGINS_MD = ROOT / "docs" / "plugins.md"
TESTS = ROOT / "tests"
SPEC_MARKER = f"{hookspecs.PROJECT}_spec"
TUTORIAL = "## Tutorial: a task family in a package of its own"
PACKAGE = "mamlflow_linear"
# The classes a plugin implements or receives, documented method by method in the reference.
CLASSES = [
    "TaskFamily",
    "RolloutTaskFamily",
    "ModelPlugin",
    "Adapter",
    "Algorithm",
    "OuterOptimizer",
    "PolicyOuterOptimizer",
    "PolicyTerms",
    "OuterStepReport",
    "Callback",
    "TrainerControl",
    "TrainStart",
    "MetricsRecord",
    "TrainSummary",
]


def _hooks() -> dict[str, Callable[..., object]]:
    return {
        name: obj
        for name, obj in vars(hookspecs).items()
        if inspect.isfunction(obj) and hasattr(obj, SPEC_MARKER)
    }


def _section(heading: str) -> str:
    """The text under a ``## `` heading of docs/plugins.md, up to the next one."""
    return section(PLUGINS_MD, heading)


def _source_def(fn: Callable[..., object]) -> ast.FunctionDef:
    node = ast.parse(textwrap.dedent(inspect.getsource(fn))).body[0]
    assert isinstance(node, ast.FunctionDef), fn
    return node


def _text(node: ast.FunctionDef) -> str:
    returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
    return f"def {node.name}({ast.unparse(node.args)}){returns}: ..."


def _check_signature(documented: ast.FunctionDef | None, fn: Callable[..., object]) -> None:
    """The documented stub has the source's parameters, annotations, defaults and return type."""
    source = _source_def(fn)
    assert documented is not None, f"docs/plugins.md lacks `{_text(source)}`"
    same = ast.dump(documented.args) == ast.dump(source.args) and ast.dump(
        documented.returns or ast.Constant(None)
    ) == ast.dump(source.returns or ast.Constant(None))
    assert same, f"docs/plugins.md has `{_text(documented)}`, the source `{_text(source)}`"


def _functions(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}


def _classes() -> dict[str, ast.ClassDef]:
    """Every class stub of docs/plugins.md; a class documented twice is an error."""
    found: dict[str, ast.ClassDef] = {}
    for node in stubs(PLUGINS_MD.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ClassDef):
            assert node.name not in found, f"docs/plugins.md has two stubs of {node.name}"
            found[node.name] = node
    return found


def _members(cls: type) -> dict[str, Callable[..., object]]:
    """The methods (and properties) ``cls`` itself defines that a subclass may override."""
    out: dict[str, Callable[..., object]] = {}
    for name, obj in vars(cls).items():
        if name.startswith("_") and name != "__init__":
            continue
        if isinstance(obj, property) and obj.fget is not None:
            out[name] = obj.fget
        elif isinstance(obj, classmethod | staticmethod):
            out[name] = obj.__func__
        elif inspect.isfunction(obj):
            out[name] = obj
    if dataclasses.is_dataclass(cls):
        out.pop("__init__", None)  # generated from the fields
    return out


HOOKS = _hooks()


def test_hooks_are_found() -> None:
    assert "register_task_families" in HOOKS
    assert _text(_source_def(HOOKS["register_task_families"])) == (
        "def register_task_families(register: Callable[[type[TaskFamily]], None]) -> None: ..."
    )


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_hook_is_documented_with_its_exact_signature(name: str) -> None:
    documented = _functions(stubs(_section("## Hooks")))
    _check_signature(documented.get(name), HOOKS[name])


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
    assert sorted(_functions(stubs(_section("## Hooks")))) == sorted(HOOKS)


CHECKS = [n for n in mamlflow.testing.__all__ if n.startswith("check_")]


@pytest.mark.parametrize("name", CHECKS)
def test_every_check_is_documented_with_its_exact_signature(name: str) -> None:
    documented = _functions(stubs(_section("## Testing plugins: `mamlflow.testing`")))
    _check_signature(documented.get(name), getattr(mamlflow.testing, name))


def test_the_docs_show_no_check_that_does_not_exist() -> None:
    documented = _functions(stubs(_section("## Testing plugins: `mamlflow.testing`")))
    assert sorted(documented) == sorted(CHECKS)


@pytest.mark.parametrize("name", CLASSES)
def test_every_method_of_a_plugin_class_is_documented_with_its_signature(name: str) -> None:
    cls = getattr(mamlflow, name)
    stub = _classes().get(name)
    assert stub is not None, f"docs/plugins.md has no stub `class {name}`"
    documented = {n.name: n for n in stub.body if isinstance(n, ast.FunctionDef)}
    members = _members(cls)
    assert sorted(documented) == sorted(members), f"{name}: the stub's methods differ"
    for method, fn in members.items():
        _check_signature(documented[method], fn)


@pytest.mark.parametrize(
    "name", [n for n in CLASSES if dataclasses.is_dataclass(getattr(mamlflow, n))]
)
def test_every_field_of_a_state_is_documented_with_its_type(name: str) -> None:
    stub = _classes()[name]
    documented = [
        (n.target.id, ast.unparse(n.annotation))
        for n in stub.body
        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
    ]
    fields = [
        (f.name, ast.unparse(ast.parse(str(f.type), mode="eval").body))
        for f in dataclasses.fields(getattr(mamlflow, name))
    ]
    assert documented == fields


def test_every_random_number_helper_is_documented_with_its_signature() -> None:
    documented = _functions(stubs(section(PLUGINS_MD, "### Random numbers: `mamlflow.rng`")))
    assert sorted(documented) == sorted(mamlflow.rng.__all__)
    for name in mamlflow.rng.__all__:
        _check_signature(documented[name], getattr(mamlflow.rng, name))


def test_the_signature_check_catches_a_difference() -> None:
    stub = ast.parse(
        "def register_models(register: Callable[[type[Algorithm]], None]) -> None: ..."
    )
    with pytest.raises(AssertionError, match="the source"):
        _check_signature(_functions(stub)["register_models"], HOOKS["register_models"])


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
