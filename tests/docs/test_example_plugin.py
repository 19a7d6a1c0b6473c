"""examples/mamlflow-example-plugin, installed for real: pip builds and installs it (offline, build
isolation on) into a folder of its own, and the CLI in a fresh process finds it by entry point.

Nothing is installed into the environment running the tests: the package goes to a temporary
``--target`` folder that only the subprocesses see on ``PYTHONPATH``, with plugin autoloading on
(``tests/conftest.py`` turns it off for this process). The example's own tests run too, so CI
exercises what a plugin author copies.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "mamlflow-example-plugin"
SOURCE = "mamlflow-example-plugin 0.1.0 (entry point example)"


def _run(args: list[str], env: dict[str, str], cwd: Path | None = None):
    result = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )
    assert result.returncode == 0, f"{' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean copy of the example: pip builds in the source tree, and ours stays untouched."""
    copy = tmp_path_factory.mktemp("example") / "mamlflow-example-plugin"
    ignore = shutil.ignore_patterns(
        "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache"
    )
    shutil.copytree(EXAMPLE, copy, ignore=ignore)
    return copy


@pytest.fixture(scope="module")
def env(package: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a process that has the example installed, and autoloads plugins."""
    site = tmp_path_factory.mktemp("site")
    # --no-deps: mamlflow is the one under test, already importable; build isolation fetches
    # setuptools from the configured index, as a user's pip would.
    _run(
        [
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-input",
            "-q",
            "--target",
            str(site),
            str(package),
        ],
        dict(os.environ),
    )
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    # One thread: these models are too small to split, and on a busy CI machine OpenMP's
    # spin-waits over more threads than free cores made the runs several times slower.
    return {
        **os.environ,
        "PYTHONPATH": path,
        "MAMLFLOW_AUTOLOAD_PLUGINS": "1",
        "OMP_NUM_THREADS": "1",
    }


def test_plugins_lists_the_example_with_its_distribution(env: dict[str, str]) -> None:
    listed = json.loads(_run(["-m", "mamlflow", "plugins", "--json"], env).stdout)
    assert listed["failures"] == []
    from_example = {(c["kind"], c["name"]) for c in listed["components"] if c["source"] == SOURCE}
    assert from_example == {
        ("task_family", "polynomial"),
        ("model", "fourier-mlp"),
        ("preset", "polynomial"),
    }


def test_run_and_eval_through_the_cli(env: dict[str, str], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _run(
        [
            "-m",
            "mamlflow",
            "run",
            "--plugin",
            "polynomial",
            "--set",
            "train.iterations=300",
            "--out",
            str(run_dir),
        ],
        env,
    )
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["config"]["task"]["name"] == "polynomial"
    assert saved["provenance"]["model.name"] == "preset polynomial"
    out = _run(
        ["-m", "mamlflow", "eval", str(run_dir), "--json", "--shots", "10", "--tasks", "200"],
        env,
    ).stdout
    result = json.loads(out)
    assert result["metric"] == "mse" and result["shots"] == 10 and result["tasks"] == 200
    before, after_one, *_, after_all = result["mean"]
    # Predicting 0 costs about 0.56; 300 iterations already make one step remove most of it.
    assert after_one < 0.5 * before and after_all < after_one, result["mean"]


def test_the_example_tests_pass(env: dict[str, str], package: Path) -> None:
    result = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], env, cwd=package)
    assert " passed" in result.stdout and "failed" not in result.stdout, result.stdout
