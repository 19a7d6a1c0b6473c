"""The house's shape holds: one-way layers, package entrances, no type branching, short functions.

Each rule is checked by reading the source (``ast``) or by import-linter, and each check is shown
to fail on a deliberately broken copy of the package, so it cannot pass vacuously.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mamlflow"
SUBPACKAGES = ("core", "kernels", "plugins", "engine", "cli", "testing")
MAX_FUNCTION_LINES = 80


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """import-linter over the package and ``pyproject.toml`` found in ``root``."""
    env = {**os.environ, "PYTHONPATH": str(root), "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _copy(tmp_path: Path) -> Path:
    shutil.copytree(PACKAGE, tmp_path / "mamlflow", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_import_contracts_hold() -> None:
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout, result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("core/errors.py", "from mamlflow.engine import trainer", "One-way layers"),
        ("kernels/_inner.py", "import mamlflow.plugins.sinusoid", "One-way layers"),
        ("engine/host.py", "from mamlflow.cli import main", "One-way layers"),
        ("core/task.py", "import yaml", "no CLI, data-kernel, config-file or plotting"),
    ],
)
def test_a_wrong_import_breaks_a_contract(
    tmp_path: Path, module: str, line: str, contract: str
) -> None:
    root = _copy(tmp_path)
    path = root / "mamlflow" / module
    path.write_text(path.read_text() + f"\n{line}  # deliberately wrong\n")
    result = _lint_imports(root)
    assert result.returncode != 0, result.stdout
    broken = [row for row in result.stdout.splitlines() if row.endswith("BROKEN")]
    assert any(contract in row for row in broken), result.stdout


# -- package entrances -----------------------------------------------------------------------------


def _imports(path: Path, root: Path = ROOT, *, named: bool = True) -> Iterator[tuple[int, str]]:
    """``(line, absolute module)`` of every import in ``path`` (relative ones resolved).

    ``named``: also the modules a ``from package import module`` names.
    """
    tree = ast.parse(path.read_text())
    parts = path.relative_to(root).with_suffix("").parts
    package = parts[:-1]  # a module's package, and a package's __init__'s own
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            yield node.lineno, base
            for alias in node.names if named else ():  # ``from pkg import _private_module``
                module = f"{base}.{alias.name}"
                where = root.joinpath(*module.split("."))
                if where.with_suffix(".py").is_file() or (where / "__init__.py").is_file():
                    yield node.lineno, module


def _owner(module: str) -> str | None:
    """``mamlflow.<subpackage>`` a module belongs to (None: the root or outside mamlflow)."""
    parts = module.split(".")
    if parts[0] != "mamlflow" or len(parts) < 2 or parts[1] not in SUBPACKAGES:
        return None
    return ".".join(parts[:2])


def _private_crossings(path: Path, own: str | None, root: Path = ROOT) -> list[str]:
    """Imports in ``path`` of a ``_private`` module of a subpackage other than ``own``."""
    found = []
    for line, module in _imports(path, root):
        owner = _owner(module)
        if owner is None or owner == own:
            continue
        inside = module.split(".")[2:]
        if any(part.startswith("_") and part != "__init__" for part in inside):
            found.append(f"{path.relative_to(root)}:{line} imports {module}")
    return found


def _sources() -> Iterator[tuple[Path, str | None]]:
    """Every Python file of the project with the subpackage whose privates it may import."""
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, _owner(".".join(path.relative_to(ROOT).with_suffix("").parts))
    for path in sorted((ROOT / "tests").rglob("*.py")):
        # tests/<pkg>/… may test the privates of mamlflow.<pkg>, and nothing else's.
        sub = path.relative_to(ROOT / "tests").parts
        yield path, f"mamlflow.{sub[0]}" if len(sub) > 1 and sub[0] in SUBPACKAGES else None
    for folder in ("benchmarks", "examples"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield path, None


def test_no_module_imports_another_package_private_module() -> None:
    found = [hit for path, own in _sources() for hit in _private_crossings(path, own)]
    assert not found, "\n".join(found)


def test_cross_package_imports_in_mamlflow_go_through_the_package_entrance() -> None:
    # ``plugins`` is the exception by design: each built-in is a module the host loads by path.
    found = []
    for path, own in _sources():
        if not path.is_relative_to(PACKAGE):
            continue
        for line, module in _imports(path, named=False):
            owner = _owner(module)
            deep = module.count(".") >= 2
            if owner not in (None, own, "mamlflow.plugins") and deep and module != owner:
                name = module.split(".")[2]
                if (PACKAGE / owner.split(".")[1] / f"{name}.py").exists():
                    found.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not found, "\n".join(found)


def test_the_private_import_check_catches_a_crossing(tmp_path: Path) -> None:
    probe = tmp_path / "mamlflow" / "engine" / "probe.py"
    probe.parent.mkdir(parents=True)
    (tmp_path / "mamlflow" / "kernels").mkdir()
    (tmp_path / "mamlflow" / "kernels" / "_select.py").write_text("")
    probe.write_text(
        "from mamlflow.kernels._maml import make_meta_step\n"
        "from ..kernels import _select\n"
        "from ._validation import validate\n"  # its own package's: allowed
    )
    assert _private_crossings(probe, "mamlflow.engine", tmp_path) == [
        "mamlflow/engine/probe.py:1 imports mamlflow.kernels._maml",
        "mamlflow/engine/probe.py:2 imports mamlflow.kernels._select",
    ]


# -- reinforcement learning is a strategy, not a branch ---------------------------------------


def _type_branches(path: Path, root: Path = ROOT) -> list[str]:
    """``isinstance(…, RolloutTaskFamily)`` and ``getattr``/``hasattr`` on an optimizer."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        text = ast.unparse(node)
        if node.func.id == "isinstance" and "RolloutTaskFamily" in text:
            found.append(f"{path.relative_to(root)}:{node.lineno} {text}")
        if node.func.id in ("getattr", "hasattr") and node.args:
            target = ast.unparse(node.args[0]).lower()
            if "optim" in target or "outer" in target:
                found.append(f"{path.relative_to(root)}:{node.lineno} {text}")
    return found


def test_engine_and_cli_do_not_branch_on_rollout_families_or_probe_optimizers() -> None:
    paths = [*(PACKAGE / "engine").rglob("*.py"), *(PACKAGE / "cli").rglob("*.py")]
    found = [hit for path in sorted(paths) for hit in _type_branches(path)]
    assert not found, "\n".join(found)


def test_the_branch_check_catches_both_kinds(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "if isinstance(family, RolloutTaskFamily):\n    report = getattr(optimizer, 'last', {})\n"
    )
    assert len(_type_branches(probe, tmp_path)) == 2


# -- short functions ----------------------------------------------------------------------------


def _long_functions(path: Path, root: Path = ROOT, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            length = (node.end_lineno or node.lineno) - first + 1
            if length > limit:
                found.append(f"{path.relative_to(root)}:{node.lineno} {node.name}: {length} lines")
    return found


def test_every_function_is_short_enough_to_read_at_once() -> None:
    paths = [p for folder in ("mamlflow", "benchmarks", "examples", "tests") for p in
             sorted((ROOT / folder).rglob("*.py"))]  # fmt: skip
    found = [hit for path in paths for hit in _long_functions(path)]
    assert not found, "\n".join(found)


def test_the_length_check_counts_decorators_and_body(tmp_path: Path) -> None:
    body = "".join(f"    x = {i}\n" for i in range(MAX_FUNCTION_LINES - 2))
    (tmp_path / "ok.py").write_text(f"@decorator\ndef fits():\n{body}")
    (tmp_path / "long.py").write_text(f"@decorator\ndef too_long():\n{body}    x = 0\n")
    assert _long_functions(tmp_path / "ok.py", tmp_path) == []
    assert _long_functions(tmp_path / "long.py", tmp_path) == ["long.py:2 too_long: 81 lines"]


def test_the_example_plugin_uses_the_public_api_only() -> None:
    public = {"mamlflow", "mamlflow.rng", "mamlflow.testing"}
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in sorted((ROOT / "examples").rglob("*.py"))
        for line, module in _imports(path, named=False)
        if module.startswith("mamlflow.") and module not in public
    ]
    assert not found, "\n".join(found)
