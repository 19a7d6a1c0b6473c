"""The command line: real subprocesses for exit codes and stderr, in-process for the happy path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import mamlflow
from mamlflow.cli import main


def _cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    return subprocess.run(
        [sys.executable, "-m", "mamlflow", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=300,
    )


def _invoke(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code in (0, None), capsys.readouterr()
    return capsys.readouterr().out


def _installed_plugin(tmp_path: Path, dist: str, module: str, source: str) -> dict[str, str]:
    """A real installed distribution (dist-info with a ``mamlflow`` entry point) on a new path.

    Returns the environment that puts it on ``sys.path`` with plugin autoloading on.
    """
    (tmp_path / f"{module}.py").write_text(source)
    info = tmp_path / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    entry = module.removesuffix("_mamlflow_plugin")
    (info / "entry_points.txt").write_text(f"[mamlflow]\n{entry} = {module}\n")
    return {"PYTHONPATH": str(tmp_path), "MAMLFLOW_AUTOLOAD_PLUGINS": "1"}


def test_import_mamlflow_stays_light() -> None:
    code = (
        "import sys, mamlflow; heavy = [m for m in ('typer', 'rich', 'numba', 'matplotlib') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_bad_set_value_is_one_clear_line(tmp_path: Path) -> None:
    r = _cli("run", "--plugin", "sinusoid", "--set", "inner.lr=-1", "--out", str(tmp_path / "r"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "inner.lr: Input should be greater than 0 (from --set)" in lines[0]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "r").exists()


def test_unknown_plugin_is_one_clear_line_with_suggestion() -> None:
    r = _cli("run", "--plugin", "sinusiod")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Unknown preset 'sinusiod'" in lines[0] and "Did you mean 'sinusoid'" in lines[0]


def test_broken_entry_point_is_one_warning_line_and_the_cli_works(tmp_path: Path) -> None:
    env = _installed_plugin(
        tmp_path,
        "broken-mamlflow-plugin",
        "broken_mamlflow_plugin",
        "raise ImportError('no module named x')\n",
    )
    r = _cli("plugins", "--json", env=env)
    assert r.returncode == 0, r.stderr
    warning_lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(warning_lines) == 1, r.stderr
    assert "broken-mamlflow-plugin" in warning_lines[0] and "pip uninstall" in warning_lines[0]
    listed = json.loads(r.stdout)
    assert any(c["name"] == "sinusoid" for c in listed["components"])
    assert [f["plugin"] for f in listed["failures"]] == ["broken"]
    strict = _cli("plugins", env={**env, "MAMLFLOW_STRICT_PLUGINS": "1"})
    assert strict.returncode != 0
    assert len(strict.stderr.strip().splitlines()) == 1, strict.stderr


# Issue 5's three broken plugins as installed packages, and the exact line each one costs.
BROKEN_PLUGINS = {
    "import error": (
        "import mf_test_no_such_module\n",
        "mamlflow: plugin 'broken' (broken-mamlflow-plugin 0.1) failed to load "
        "(broken_mamlflow_plugin): ModuleNotFoundError: No module named 'mf_test_no_such_module'; "
        "uninstall it with `pip uninstall broken-mamlflow-plugin` or set "
        "MAMLFLOW_AUTOLOAD_PLUGINS=0",
    ),
    "misspelled hook": (
        "from mamlflow import hookimpl\n\n@hookimpl\ndef register_presets_(register):\n    pass\n",
        "mamlflow: plugin 'broken' (broken-mamlflow-plugin 0.1) implements unknown hook "
        "'register_presets_' (did you mean 'register_presets'?), so none of its hooks are used; "
        "fix the hook name in the plugin, or uninstall it with "
        "`pip uninstall broken-mamlflow-plugin` or set MAMLFLOW_AUTOLOAD_PLUGINS=0",
    ),
    "duplicate name": (
        "from mamlflow import Preset, hookimpl\n\n@hookimpl\ndef register_presets(register):\n"
        "    register(Preset('sinusoid', 'a second sinusoid'))\n",
        "mamlflow: plugin 'broken' (broken-mamlflow-plugin 0.1) registers a preset 'sinusoid' that "
        "duplicates the one from mamlflow (built-in); the first one is kept — "
        "rename it or uninstall broken-mamlflow-plugin",
    ),
}


@pytest.mark.parametrize("kind", list(BROKEN_PLUGINS))
def test_each_broken_plugin_kind_is_one_line_and_strict_mode_exits_with_it(
    tmp_path: Path, kind: str
) -> None:
    source, expected = BROKEN_PLUGINS[kind]
    env = _installed_plugin(tmp_path, "broken-mamlflow-plugin", "broken_mamlflow_plugin", source)
    r = _cli("plugins", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [f"warning: {expected}"]
    assert "sinusoid" in r.stdout  # everything else is listed
    strict = _cli("plugins", env={**env, "MAMLFLOW_STRICT_PLUGINS": "1"})
    assert (strict.returncode, strict.stderr.splitlines()) == (1, [f"error: {expected}"])
    assert strict.stdout == ""


def test_config_prints_the_paper_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    out = _invoke(capsys, "config", "--plugin", "sinusoid", "--json")
    cfg = json.loads(out)
    assert cfg["train"]["iterations"] == 70_000 and cfg["train"]["meta_batch_size"] == 25
    assert cfg["inner"] == {"steps": 1, "lr": 0.01, "first_order": False}
    assert cfg["outer"]["name"] == "adam" and cfg["outer"]["lr"] == 1e-3
    assert cfg["task"]["shots"] == 10 and cfg["kernel"]["strategy"] == "auto"


def test_plugins_json_lists_builtins(capsys: pytest.CaptureFixture[str]) -> None:
    listed = json.loads(_invoke(capsys, "plugins", "--json"))
    names = {(c["kind"], c["name"]) for c in listed["components"]}
    for expected in [
        ("task_family", "sinusoid"),
        ("model", "mlp"),
        ("algorithm", "maml"),
        ("algorithm", "fomaml"),
        ("algorithm", "metasgd"),
        ("algorithm", "anil"),
        ("optimizer", "adam"),
        ("optimizer", "adamw"),
        ("optimizer", "sgd"),
        ("preset", "sinusoid"),
        ("callback", "metrics"),
    ]:
        assert expected in names
    assert all(c["source"] == "mamlflow (built-in)" for c in listed["components"])
    builtin = {"name": "mamlflow", "version": mamlflow.__version__}
    assert all(c["distribution"] == builtin for c in listed["components"])


@pytest.mark.slow
def test_run_eval_resume_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    common = ["--set", "train.meta_batch_size=5", "--set", "train.log_every=10"]
    _invoke(
        capsys,
        "run",
        "--plugin",
        "sinusoid",
        "--set",
        "train.iterations=20",
        *common,
        "--out",
        str(run_dir),
        "--seed",
        "3",
    )
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "learning_curve.png"):
        assert (run_dir / name).is_file(), name
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["config"]["seed"] == 3 and saved["provenance"]["seed"] == "--seed"
    assert saved["provenance"]["train.iterations"] == "--set"
    assert saved["provenance"]["inner.lr"] == "preset sinusoid"

    # Continue the same run for 20 more iterations.
    _invoke(capsys, "run", "--resume", str(run_dir), "--set", "train.iterations=40")
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [10, 20, 30, 40]

    out = _invoke(
        capsys, "eval", str(run_dir), "--shots", "5", "--steps", "2", "--tasks", "50", "--json"
    )
    result = json.loads(out)
    assert set(result) == {
        "metric", "shots", "steps", "mean", "ci95", "tasks", "median", "nonfinite", "diverged"
    }  # fmt: skip
    assert result["metric"] == "mse" and result["shots"] == 5 and result["tasks"] == 50
    assert result["steps"] == [0, 1, 2] and len(result["mean"]) == len(result["ci95"]) == 3
    assert len(result["median"]) == 3 and result["nonfinite"] == result["diverged"] == [0, 0, 0]
    assert (run_dir / "eval.json").is_file()
    assert (run_dir / "eval_curve.png").stat().st_size > 0
    assert (run_dir / "examples_k5.png").stat().st_size > 0


def test_existing_run_dir_is_never_overwritten(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")
    r = _cli("run", "--plugin", "sinusoid", "--out", str(run_dir))
    assert r.returncode == 2 and "--resume" in r.stderr
    assert (run_dir / "config.json").read_text() == "{}"


def test_resume_refuses_to_change_what_is_learned(tmp_path: Path) -> None:
    r = _cli(
        "run",
        "--plugin",
        "sinusoid",
        "--set",
        "train.iterations=2",
        "--set",
        "train.meta_batch_size=2",
        "--out",
        str(tmp_path / "run"),
    )
    assert r.returncode == 0, r.stderr
    r = _cli("run", "--resume", str(tmp_path / "run"), "--set", "inner.lr=0.5")
    assert r.returncode == 2
    assert "inner.lr: cannot change on --resume" in r.stderr


def test_eval_of_a_directory_without_a_run_is_one_line(tmp_path: Path) -> None:
    r = _cli("eval", str(tmp_path))
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "metaflow run" in r.stderr


def test_console_scripts_are_the_same_app() -> None:
    from importlib.metadata import entry_points

    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts["metaflow"] == scripts["mamlflow"] == "mamlflow.cli:main"
    r = _cli("--help")
    assert r.returncode == 0 and "Netflix" in textwrap.dedent(r.stdout).replace("\n", " ")


def test_ctrl_c_stops_cleanly_with_a_resumable_checkpoint(tmp_path: Path) -> None:
    import signal
    import time

    from mamlflow.engine import load_checkpoint

    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mamlflow",
            "run",
            "--plugin",
            "sinusoid",
            "--out",
            str(run_dir),
            "--set",
            "train.iterations=10000000",
            "--set",
            "train.log_every=5",
            "--set",
            "kernel.strategy=batched",
            "--set",
            "train.meta_batch_size=4",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().strip()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never logged"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "interrupted" in out
    ckpt = load_checkpoint(run_dir)
    assert 0 < ckpt.iteration < 10_000_000 and not ckpt.finished


def test_a_plugin_can_add_a_command(tmp_path: Path) -> None:
    source = textwrap.dedent(
        """
        from mamlflow import hookimpl

        def hello(name: str = "world") -> None:
            print(f"hello {name} from a plugin")

        @hookimpl
        def register_commands(register):
            register("hello", hello)
        """
    )
    env = _installed_plugin(tmp_path, "hello-mamlflow-plugin", "hello_mamlflow_plugin", source)
    r = _cli("hello", "--name", "maml", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "hello maml from a plugin"
    listed = json.loads(_cli("plugins", "--json", env=env).stdout)
    assert {
        "kind": "command",
        "name": "hello",
        "source": "hello-mamlflow-plugin 0.1 (entry point hello)",
        "distribution": {"name": "hello-mamlflow-plugin", "version": "0.1"},
    }.items() <= next(c for c in listed["components"] if c["kind"] == "command").items()


def test_run_without_a_preset_names_the_available_ones() -> None:
    r = _cli("run")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--plugin NAME" in lines[0] and "sinusoid" in lines[0]


def test_unavailable_device_fails_before_making_a_run_dir(tmp_path: Path) -> None:
    r = _cli("run", "--plugin", "sinusoid", "--device", "cuda:99", "--out", str(tmp_path / "r"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: device: 'cuda:99'"), r.stderr
    assert not (tmp_path / "r").exists()


def test_eval_best_reads_the_best_checkpoint_and_keeps_both_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    common = ("--set", "train.iterations=20", "--set", "train.meta_batch_size=5")
    validated = ("--set", "train.val_every=5", "--set", "train.val_tasks=20")
    _invoke(capsys, "run", "--plugin", "sinusoid", *common, *validated, "--out", str(run_dir))
    args = ("eval", str(run_dir), "--shots", "5", "--steps", "1", "--tasks", "20", "--json")
    final = json.loads(_invoke(capsys, *args, "--no-plots"))
    best = json.loads(_invoke(capsys, *args, "--no-plots", "--best"))
    saved = json.loads((run_dir / "eval.json").read_text())["results"]
    assert sorted(r["checkpoint"] for r in saved) == ["best", "final"]
    by_name = {r["checkpoint"]: r for r in saved}
    assert by_name["best"]["mean"] == best["mean"] and by_name["final"]["mean"] == final["mean"]
    assert by_name["best"]["iteration"] in (5, 10, 15, 20)

    no_val = tmp_path / "no-val"
    _invoke(capsys, "run", "--plugin", "sinusoid", *common, "--out", str(no_val))
    r = _cli("eval", str(no_val), "--best")
    assert r.returncode != 0
    assert r.stderr.strip().count("\n") == 0 and "train.val_every" in r.stderr
