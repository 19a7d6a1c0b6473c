"""README.md and docs/*.md are tested files.

* every ```python block runs (in a temporary directory, as a module of its own), unless a
  ``<!-- not run: reason -->`` line just before it says why not;
* every ``metaflow``/``mamlflow`` command line of a bash block names a real command and real
  options of the Typer app (checked with ``--help`` appended: nothing runs);
* Python blocks import only the public API, stub blocks parse, YAML blocks are configs that
  resolve, TOML blocks parse;
* every docs page is linked, every relative link and anchor resolves, and every repository path
  and ``mamlflow.…`` name written in inline code exists.
"""

from __future__ import annotations

import ast
import importlib
import re
import shlex
import sys
import tomllib
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import mamlflow
import mamlflow.rng
import mamlflow.testing
from mamlflow.cli import main

from ._markdown import DOCS, README, ROOT, Block, anchors, blocks, inline_code, links, pages

ALL_BLOCKS = [block for page in pages() for block in blocks(page)]
PYTHON = [b for b in ALL_BLOCKS if b.language == "python"]
PROGRAMS = [b for b in PYTHON if b.file is None and b.not_run is None]
# The plugin tutorial's package, written out and tested by test_hooks_documented.py.
TUTORIAL_FILES = {
    "pyproject.toml",
    "src/mamlflow_linear/__init__.py",
    "src/mamlflow_linear/plugin.py",
    "tests/conftest.py",
    "tests/test_plugin.py",
}
MAX_NOT_RUN = 2
PUBLIC = {
    "mamlflow": set(mamlflow.__all__),
    "mamlflow.rng": set(mamlflow.rng.__all__),
    "mamlflow.testing": set(mamlflow.testing.__all__),
}


def _ids(items: list[Block]) -> list[str]:
    return [b.id for b in items]


# -- Python blocks run ---------------------------------------------------------------------------


def _write_files(page: Path, root: Path) -> set[str]:
    """The page's file blocks written under ``root``; returns the top-level packages they make."""
    files: dict[str, str] = {}
    for block in blocks(page):
        if block.file is not None:
            files[block.file] = files.get(block.file, "") + block.code
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text, encoding="utf-8")
    return {p.split("/")[1] for p in files if p.startswith("src/") and p.count("/") >= 2}


@pytest.mark.parametrize("block", PROGRAMS, ids=_ids(PROGRAMS))
def test_python_block_runs(
    block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    packages = _write_files(block.page, tmp_path)
    if packages:
        monkeypatch.syspath_prepend(str(tmp_path / "src"))
    # A module of its own, in sys.modules: pydantic resolves annotations through it, and a
    # block may register itself as a plugin (host.add_plugin(sys.modules[__name__], ...)).
    name = "docs_block_" + re.sub(r"\W", "_", block.id)
    module = types.ModuleType(name)
    module.__file__ = str(tmp_path / f"{name}.py")
    monkeypatch.setitem(sys.modules, name, module)
    try:
        exec(compile(block.code, block.id, "exec"), module.__dict__)
    finally:
        for loaded in [m for m in sys.modules if m.split(".")[0] in packages]:
            del sys.modules[loaded]
    out = capsys.readouterr().out
    assert "Traceback" not in out, out


def test_every_python_block_is_run_or_says_why_not() -> None:
    skipped = [b for b in PYTHON if b.not_run is not None]
    assert len(skipped) <= MAX_NOT_RUN, f"too many blocks not run: {_ids(skipped)}"
    for block in skipped:
        assert len(block.not_run or "") >= 10, f"{block.id}: say why the block is not run"
    for page in pages():
        markers = page.read_text(encoding="utf-8").count("<!-- not run")
        marked = sum(b.page == page and b.not_run is not None for b in ALL_BLOCKS)
        assert markers == marked, f"{page.name}: a 'not run' marker is not right before a block"
    assert len(PROGRAMS) >= 10  # the parser finds the blocks


def test_file_blocks_are_only_the_plugin_tutorials_package() -> None:
    files = {(b.page.name, b.file) for b in ALL_BLOCKS if b.file is not None}
    assert files == {("plugins.md", path) for path in TUTORIAL_FILES}


# -- command lines -------------------------------------------------------------------------------


def _command_lines() -> Iterator[tuple[str, list[str]]]:
    """``(where, argv)`` for every metaflow/mamlflow invocation in a bash block."""
    for block in ALL_BLOCKS:
        if block.language not in ("bash", "sh", "shell", "console"):
            continue
        text = block.code.replace("\\\n", " ")
        for offset, line in enumerate(text.splitlines(), 1):
            words = shlex.split(line, comments=True)
            while words and re.fullmatch(r"\w+=\S*", words[0]):  # VAR=value prefixes
                words = words[1:]
            if words[:1] in (["metaflow"], ["mamlflow"]):
                yield f"{block.id}+{offset}", words[1:]
            elif "-m" in words and words[words.index("-m") + 1 :][:1] == ["mamlflow"]:
                yield f"{block.id}+{offset}", words[words.index("-m") + 2 :]


COMMAND_LINES = list(_command_lines())


def test_command_lines_are_found() -> None:
    assert len(COMMAND_LINES) >= 30
    assert any(argv[:1] == ["plugins"] and argv[1:2] == ["install"] for _, argv in COMMAND_LINES)


@pytest.mark.parametrize(
    "argv", [argv for _, argv in COMMAND_LINES], ids=[where for where, _ in COMMAND_LINES]
)
def test_command_line_names_real_commands_and_options(
    argv: list[str], capsys: pytest.CaptureFixture
) -> None:
    # --help is eager: the command and every option are parsed (an unknown one exits 2 with
    # click's message), then help is printed instead of running anything.
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    captured = capsys.readouterr()
    assert exit_info.value.code in (0, None), f"metaflow {shlex.join(argv)}:\n{captured.err}"
    assert "Usage:" in captured.out


def test_the_command_line_check_catches_a_wrong_option(capsys: pytest.CaptureFixture) -> None:
    for argv in (["run", "--plugn", "sinusoid"], ["evaluate", "runs/x"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, "--help"])
        assert exit_info.value.code == 2, argv
    capsys.readouterr()


# -- what blocks may import, and the other languages ---------------------------------------------


def _private_uses(code: str) -> Iterator[str]:
    """The non-public mamlflow names ``code`` imports or reaches by attribute."""
    tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top == "mamlflow" and alias.name not in ("mamlflow", *PUBLIC):
                    yield f"import {alias.name}"
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level or module.split(".")[0] != "mamlflow":
                continue
            if module not in PUBLIC:
                yield f"from {module} import ..."
                continue
            for alias in node.names:
                if alias.name not in PUBLIC[module]:
                    yield f"from {module} import {alias.name}"
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "mamlflow"
            and node.attr not in PUBLIC["mamlflow"] | {"testing"}
        ):
            yield f"mamlflow.{node.attr}"


@pytest.mark.parametrize("block", PYTHON, ids=_ids(PYTHON))
def test_python_block_uses_only_the_public_api(block: Block) -> None:
    private = list(_private_uses(block.code))
    assert not private, f"{block.id} uses non-public names: {private}"


def test_the_public_api_check_catches_private_names() -> None:
    code = (
        "import mamlflow\nimport mamlflow.engine\nfrom mamlflow.core.task import Split\n"
        "from mamlflow import get_host, reset_host\nmamlflow.core.rng.uniform\n"
    )
    assert list(_private_uses(code)) == [
        "import mamlflow.engine",
        "from mamlflow.core.task import ...",
        "from mamlflow import reset_host",
        "mamlflow.core",
    ]


def test_stub_blocks_are_python_syntax() -> None:
    stubs = [b for b in ALL_BLOCKS if b.language == "pyi"]
    assert len(stubs) >= 20
    for block in stubs:
        ast.parse(block.code, filename=block.id)


def test_toml_blocks_parse() -> None:
    for block in [b for b in ALL_BLOCKS if b.language == "toml"]:
        tomllib.loads(block.code.split("\n", 1)[1] if block.file else block.code)


def test_yaml_blocks_are_configs_that_resolve(tmp_path: Path) -> None:
    configs = [b for b in ALL_BLOCKS if b.language == "yaml"]
    assert configs
    host = mamlflow.PluginHost(autoload=False)
    for block in configs:
        path = tmp_path / "config.yaml"
        path.write_text(block.code, encoding="utf-8")
        preset = None if "preset" in yaml.safe_load(block.code) else "sinusoid"
        mamlflow.resolve(host, preset=preset, file=path)


# -- pages, links, paths and names ---------------------------------------------------------------


def _linked(page: Path) -> set[Path]:
    targets = set()
    for _, target in links(page):
        path = target.split("#", 1)[0]
        if path and "://" not in path:
            targets.add((page.parent / path).resolve())
    return targets


def test_readme_is_short_and_links_every_docs_page() -> None:
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 200
    docs = set(DOCS.glob("*.md"))
    assert docs - _linked(README) == set()


def test_every_docs_page_is_listed_in_the_index() -> None:
    docs = set(DOCS.glob("*.md")) - {DOCS / "index.md"}
    assert docs - _linked(DOCS / "index.md") == set()


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_links_and_anchors_resolve(page: Path) -> None:
    for line, target in links(page):
        if "://" in target or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.name}:{line}: {target} does not exist"
        if anchor and file.suffix == ".md":
            assert anchor in anchors(file), f"{page.name}:{line}: no heading for #{anchor}"


PATH = re.compile(r"(?<![\w/.~-])(?:tests|benchmarks|mamlflow|examples|docs)/[\w./-]*")
NAME = re.compile(r"mamlflow(?:\.\w+)+")


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attr in parts[split:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_paths_and_names_in_inline_code_exist(page: Path) -> None:
    for line, code in inline_code(page):
        for path in PATH.findall(code):
            assert (ROOT / path.rstrip(".")).exists(), f"{page.name}:{line}: no {path}"
        for dotted in NAME.findall(code):
            where = f"{page.name}:{line}: {dotted}"
            private = [p for p in dotted.split(".") if p.startswith("_") and not p.endswith("__")]
            assert not private, f"{where} is private"
            assert _resolves(dotted), f"{where} does not exist"
