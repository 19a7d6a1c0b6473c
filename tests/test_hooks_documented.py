"""Every hook is documented with its exact signature and has a test; the docs example runs.

Hooks are found by introspection (the ``mamlflow_spec`` marker pluggy puts on each hookspec), so a
new hook fails here until ``docs/hooks.md`` lists it and some test registers through it.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

from mamlflow.core import hookspecs
from mamlflow.core.host import PluginHost

ROOT = Path(__file__).resolve().parents[1]
HOOKS_MD = ROOT / "docs" / "hooks.md"
TESTS = ROOT / "tests"
SPEC_MARKER = f"{hookspecs.PROJECT}_spec"


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


def _signature(hook: Callable[..., object]) -> str:
    """``name(arg: Annotation) -> Return``, exactly as written in hookspecs.py."""
    sig = inspect.signature(hook)
    params = [p.replace(annotation=_Annotation(p.annotation)) for p in sig.parameters.values()]
    sig = sig.replace(parameters=params, return_annotation=_Annotation(sig.return_annotation))
    return f"{hook.__name__}{sig}"


HOOKS = _hooks()


def test_hooks_are_found() -> None:
    assert "register_task_families" in HOOKS
    assert _signature(HOOKS["register_task_families"]) == (
        "register_task_families(register: Callable[[type[TaskFamily]], None]) -> None"
    )


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_hook_is_documented_with_its_exact_signature(name: str) -> None:
    lines = {line.strip() for line in HOOKS_MD.read_text(encoding="utf-8").splitlines()}
    assert _signature(HOOKS[name]) in lines, f"docs/hooks.md lacks `{_signature(HOOKS[name])}`"


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
    headings = re.findall(r"^### `(\w+)`$", HOOKS_MD.read_text(encoding="utf-8"), re.M)
    assert sorted(headings) == sorted(HOOKS)


# -- the example plugin in docs/hooks.md ---------------------------------------------------------


def _example_source() -> str:
    text = HOOKS_MD.read_text(encoding="utf-8")
    section = text.split("## Example plugin", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "docs/hooks.md has no python block under 'Example plugin'"
    return match.group(1)


@pytest.fixture
def example_plugin(tmp_path: Path) -> Iterator[ModuleType]:
    if not hasattr(importlib.import_module("mamlflow"), "hookimpl"):
        pytest.skip("mamlflow/__init__.py does not export hookimpl yet")
    path = tmp_path / "mf_docs_example_plugin.py"
    path.write_text(_example_source(), encoding="utf-8")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses and pydantic look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(path.stem, None)


def test_the_example_plugin_registers_and_samples(example_plugin: ModuleType) -> None:
    host = PluginHost(builtins=(), autoload=False)
    undo = host.add_plugin(example_plugin, "myplugin")
    assert host.failures == []
    assert host.preset("linear").values["task"] == {"name": "linear", "shots": 5}
    family_cls = host.task_family("linear")
    family = family_cls(family_cls.Config(shots=3, query=4))

    batch = family.sample(0, 7, torch.arange(5))
    assert batch.support["x"].shape == (5, 3, 1)
    assert batch.query["y"].shape == (5, 4, 1)
    # Task 3 does not depend on which other tasks are asked for.
    alone = family.sample(0, 7, torch.tensor([3]))
    torch.testing.assert_close(alone.support["y"][0], batch.support["y"][3])

    def model(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return x * params["a"] + params["b"]

    params = {"a": torch.tensor(1.0), "b": torch.tensor(0.0)}
    data = {key: value[0] for key, value in batch.query.items()}
    loss = family.objective(model)(params, data)
    assert loss.shape == () and loss >= 0
    undo()
    assert host.names("task_family") == []
