"""``metaflow plugins install`` / ``uninstall``: real pip, offline, in a throwaway virtualenv.

Each test makes a virtualenv in ``tmp_path`` with ``--system-site-packages``, so torch and the
editable mamlflow under test are importable there while pip installs into, and uninstalls from,
the virtualenv alone: the test environment is never changed, and a broken refusal to uninstall
mamlflow would meet pip's own "outside environment" refusal rather than remove it. Plugins are
small setuptools projects written to ``tmp_path``; pip builds them with build isolation from the
configured package index (a local one on the reference machine).
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import textwrap
from importlib.util import find_spec
from pathlib import Path

import pytest

import mamlflow

TINY_PLUGIN = """
from mamlflow import Callback, Preset, hookimpl


class TinyPrinter(Callback):
    name = "tiny-printer"


@hookimpl
def register_presets(register):
    register(Preset("tiny", "a tiny preset", {"task": {"name": "sinusoid"}}))


@hookimpl
def register_callbacks(register):
    register(TinyPrinter)
"""


@pytest.fixture
def venv_python(tmp_path: Path) -> Path:
    """A virtualenv's interpreter that sees this environment's packages; pip comes from there."""
    venv = tmp_path / "venv"
    # --without-pip: ensurepip costs seconds, and the system pip it then runs installs into the
    # virtualenv (pip installs into the running interpreter's prefix).
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        check=True,
    )
    python = venv / "bin" / "python"
    # --system-site-packages shows the base interpreter's packages; when the tests run in a
    # virtualenv themselves, torch and the editable mamlflow live in that one's site-packages,
    # so add those too (addsitedir also runs their .pth files, the editable install's finder).
    inner = subprocess.run(
        [python, "-c", "import site; print(site.getsitepackages()[0])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    outer = [p for p in site.getsitepackages() if p != inner]
    lines = "".join(f"import site; site.addsitedir({p!r})\n" for p in outer)
    (Path(inner) / "_outer_environment.pth").write_text(lines)
    probe = "import importlib.util as u; print(u.find_spec('mamlflow').origin)"
    origin = subprocess.run(
        [python, "-c", probe], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert origin.stdout.strip() == mamlflow.__file__, "the editable mamlflow is not visible"
    return python


def _mamlflow(
    python: Path, *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), "-m", "mamlflow", *args],
        capture_output=True,
        text=True,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        env={**os.environ, "MAMLFLOW_AUTOLOAD_PLUGINS": "1", **(env or {})},
        cwd=python.parents[2],  # tmp_path: no source tree on sys.path
        timeout=300,
    )


def _project(root: Path, dist: str, module: str, source: str) -> Path:
    """A one-module setuptools project with one ``mamlflow`` entry point."""
    project = root / dist
    (project / module).mkdir(parents=True)
    (project / module / "__init__.py").write_text(textwrap.dedent(source))
    (project / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""
            [build-system]
            requires = ["setuptools>=68"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{dist}"
            version = "0.3"
            dependencies = ["mamlflow"]

            [project.entry-points.mamlflow]
            {module.removeprefix("mamlflow_")} = "{module}"
            """
        )
    )
    return project


def _listed(python: Path, env: dict[str, str] | None = None) -> dict:
    r = _mamlflow(python, "plugins", "--json", env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _installed_in(python: Path, dist: str) -> bool:
    """Whether ``dist`` has a dist-info folder in the virtualenv's own site-packages."""
    site = next((python.parents[1] / "lib").glob("python3.*/site-packages"))
    return any(site.glob(f"{dist.replace('-', '_')}-*.dist-info"))


@pytest.mark.slow
def test_install_reports_what_the_new_package_registers_and_uninstall_removes_it(
    tmp_path: Path, venv_python: Path
) -> None:
    project = _project(tmp_path, "mamlflow-tiny", "mamlflow_tiny", TINY_PLUGIN)

    r = _mamlflow(venv_python, "plugins", "install", str(project))
    assert r.returncode == 0, r.stderr
    assert "Successfully installed mamlflow-tiny-0.3" in r.stdout  # pip's own output passes
    assert r.stdout.splitlines()[-1] == (
        "mamlflow-tiny 0.3 registers: preset 'tiny', callback 'tiny-printer'"
    )
    assert _installed_in(venv_python, "mamlflow-tiny")
    assert find_spec("mamlflow_tiny") is None  # the test environment is untouched

    listed = _listed(venv_python)
    assert {
        "kind": "preset",
        "name": "tiny",
        "source": "mamlflow-tiny 0.3 (entry point tiny)",
        "distribution": {"name": "mamlflow-tiny", "version": "0.3"},
        "description": "a tiny preset",
    } in listed["components"]
    sinusoid = next(c for c in listed["components"] if c["name"] == "sinusoid")
    assert sinusoid["distribution"] == {"name": "mamlflow", "version": mamlflow.__version__}
    assert listed["failures"] == []

    # Without --yes it asks; anything but yes keeps the package.
    r = _mamlflow(venv_python, "plugins", "uninstall", "mamlflow_tiny", stdin="n\n")
    assert r.returncode == 1
    assert "Uninstall mamlflow-tiny 0.3 from" in r.stdout
    assert _installed_in(venv_python, "mamlflow-tiny")

    r = _mamlflow(venv_python, "plugins", "uninstall", "mamlflow-tiny", "--yes")
    assert r.returncode == 0, r.stderr
    assert "Successfully uninstalled mamlflow-tiny-0.3" in r.stdout
    assert not _installed_in(venv_python, "mamlflow-tiny")
    assert all(c["distribution"]["name"] == "mamlflow" for c in _listed(venv_python)["components"])


@pytest.mark.slow
def test_a_broken_plugin_is_reported_after_install_and_uninstalls_even_in_strict_mode(
    tmp_path: Path, venv_python: Path
) -> None:
    project = _project(
        tmp_path, "mamlflow-broken", "mamlflow_broken", "import mf_test_no_such_module\n"
    )
    expected = (
        "mamlflow: plugin 'broken' (mamlflow-broken 0.3) failed to load (mamlflow_broken): "
        "ModuleNotFoundError: No module named 'mf_test_no_such_module'; uninstall it with "
        "`pip uninstall mamlflow-broken` or set MAMLFLOW_AUTOLOAD_PLUGINS=0"
    )

    r = _mamlflow(venv_python, "plugins", "install", str(project))
    assert r.returncode == 0, r.stderr  # installed; the plugin's problem is a warning
    assert r.stderr.strip().splitlines()[-1] == f"warning: {expected}"
    assert "registers" not in r.stdout

    strict = {"MAMLFLOW_STRICT_PLUGINS": "1"}
    r = _mamlflow(venv_python, "plugins", env=strict)
    assert (r.returncode, r.stderr.strip()) == (1, f"error: {expected}")

    # The way out must not load the broken plugin, or strict mode would block it.
    r = _mamlflow(venv_python, "plugins", "uninstall", "mamlflow-broken", "-y", env=strict)
    assert r.returncode == 0, r.stderr
    assert "failed to load" not in r.stderr
    assert not _installed_in(venv_python, "mamlflow-broken")
    assert _listed(venv_python, env=strict)["failures"] == []


@pytest.mark.parametrize(
    ("target", "env"),
    [
        ("no-such-dir", {}),  # a path (made absolute below) that does not exist
        ("mamlflow-no-such-plugin", {"PIP_NO_INDEX": "1"}),  # pip's own settings apply
    ],
)
def test_a_pip_failure_is_one_line_and_pip_exit_status(
    tmp_path: Path, venv_python: Path, target: str, env: dict[str, str]
) -> None:
    if target == "no-such-dir":
        target = str(tmp_path / target)
    r = _mamlflow(venv_python, "plugins", "install", target, env=env)
    assert r.returncode == 1, r.stderr  # pip's status for a failed install
    ours = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert ours == ["error: pip install failed (exit status 1); pip's messages above say why"]
    assert r.stderr.strip().splitlines()[-1] == ours[0]
    assert "ERROR:" in r.stderr  # pip's explanation is kept, above ours
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("name", ["mamlflow", "MamlFlow==0.1.0"])
def test_uninstall_refuses_to_remove_mamlflow_itself(venv_python: Path, name: str) -> None:
    r = _mamlflow(venv_python, "plugins", "uninstall", name, "--yes")
    assert r.returncode == 2
    assert r.stderr.strip() == (
        "error: refusing to uninstall mamlflow itself with `metaflow plugins uninstall`, which "
        "removes plugins; run `python -m pip uninstall mamlflow` if you mean it"
    )
    assert r.stdout == ""
    assert find_spec("mamlflow") is not None


def test_uninstall_of_a_package_that_is_not_installed_is_one_line(venv_python: Path) -> None:
    r = _mamlflow(venv_python, "plugins", "uninstall", "mamlflow-not-installed", "-y")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: 'mamlflow-not-installed' is not installed in mamlflow's environment ("
    ), r.stderr
