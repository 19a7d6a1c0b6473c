"""Random values, types and garbage for every config key of every registered preset.

Whatever a user writes, ``resolve`` returns a valid config or raises a ``ConfigError`` whose every
line names a key and what is wrong with it; nothing else escapes. A config that resolves then
builds its components or fails with one ``MamlflowError`` line. A second suite drives the real
``metaflow run`` with random ``--set`` text in a worker process with a memory cap, so a value
that asks for more memory than the machine has is an error line, never a crash.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mamlflow.core import ConfigError, UnknownNameError
from mamlflow.engine import PluginHost, config_schema, resolve

HOST = PluginHost(autoload=False)
PRESETS = HOST.names("preset")
KEYS = {preset: [row.key for row in config_schema(HOST, preset)] for preset in PRESETS}


def _settings(examples: int) -> settings:
    """Reproducible (derandomized, no example database) and untimed: CI runs the same inputs."""
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["", "0", "-1", "1e400", "nan", "sinusoid", "mlp", "adam", "cuda:7"]),
)
junk = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)


def _one_line_each(issues: list[str]) -> None:
    assert issues, "a ConfigError without a line"
    for line in issues:
        assert line.strip() and "\n" not in line and ": " in line, repr(line)


def test_any_value_for_any_key_resolves_or_is_one_config_error_per_problem(
    record_property: pytest.RecordProperty,
) -> None:
    tried: list[str] = []

    @_settings(600)
    @given(st.sampled_from(PRESETS), st.data())
    def check(preset: str, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(KEYS[preset]), label="key")
        value = data.draw(junk, label="value")
        tried.append(key)
        try:
            resolved = resolve(HOST, preset=preset, overrides={key: (value, "--set")})
        except ConfigError as error:
            _one_line_each(error.issues)
            return
        except UnknownNameError as error:
            _one_line_each([str(error)])
            return
        # What resolved is a valid config: its JSON form is strict and validates again.
        json.dumps(resolved.config.model_dump(mode="json"), allow_nan=False)

    check()
    record_property("inputs_tried", len(tried))
    print(f"tried {len(tried)} values on {len(set(tried))} keys of {len(PRESETS)} presets")
    assert len(tried) >= 500


def test_any_set_text_parses_or_is_one_line(record_property: pytest.RecordProperty) -> None:
    tried = []

    @_settings(300)
    @given(st.sampled_from(KEYS["sinusoid"]), st.text(max_size=40))
    def check(key: str, text: str) -> None:
        tried.append(text)
        try:
            resolve(HOST, preset="sinusoid", sets=[f"{key}={text}"])
        except ConfigError as error:
            _one_line_each(error.issues)

    check()
    record_property("inputs_tried", len(tried))
    assert len(tried) >= 250


_WORKER = textwrap.dedent(
    """
    import contextlib, io, json, resource, sys, tempfile
    # A memory cap: a value asking for more than the machine has must fail to allocate (an
    # error line), not get the process killed or the machine swapping.
    limit = 6 * 2**30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from mamlflow.cli import main
    for line in sys.stdin:
        preset, key, text = json.loads(line)
        err = io.StringIO()
        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stderr(err), \\
                contextlib.redirect_stdout(io.StringIO()):
            small = ["train.iterations=2", "kernel.strategy=batched", "eval.tasks=10"]
            if preset == "navigation":
                small += ["task.shots=2", "task.query=2", "train.meta_batch_size=2",
                          "task.horizon=10", "task.eval_timesteps=null", "train.val_every=null"]
            args = ["run", "--plugin", preset, *(x for s in small for x in ("--set", s)),
                    "--set", f"{key}={text}", "--out", f"{tmp}/run"]
            try:
                main(args)
                code = 0
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            except BaseException as exc:
                import traceback
                code, err = -1, io.StringIO(traceback.format_exc())
        print(json.dumps([code, err.getvalue()]), flush=True)
    """
)


@pytest.fixture(scope="module")
def worker() -> Any:
    env = {**os.environ, "MAMLFLOW_AUTOLOAD_PLUGINS": "0", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", _WORKER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    yield process
    process.communicate(timeout=60)


def _yaml_text(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


@pytest.mark.parametrize(("preset", "examples"), [("sinusoid", 120), ("navigation", 40)])
def test_metaflow_run_with_random_set_values_is_a_run_or_one_error_line(
    worker: Any, record_property: pytest.RecordProperty, preset: str, examples: int
) -> None:
    tried = []
    # Not the keys that make a run long (the rest is what a user might set wrong).
    long = ("train.iterations", "device", "train.meta_batch_size", "task.horizon", "eval.")
    keys = [k for k in KEYS[preset] if not k.startswith(long)]

    @_settings(examples)
    @given(st.sampled_from(keys), scalars | st.lists(scalars, max_size=3))
    def check(key: str, value: Any) -> None:
        text = _yaml_text(value)
        tried.append((key, text))
        worker.stdin.write(json.dumps([preset, key, text]) + "\n")
        worker.stdin.flush()
        code, err = json.loads(worker.stdout.readline())
        assert code in (0, 1, 2), f"{key}={text}: {err}"
        lines = [line for line in err.splitlines() if line.strip()]
        if code:
            assert "Traceback" not in err and lines, f"{key}={text}: {err}"
            assert all(line.startswith(("error:", "warning:")) for line in lines), err

    check()
    record_property("inputs_tried", len(tried))
    print(f"tried {len(tried)} metaflow runs of {preset}")
    assert len(tried) >= 0.8 * examples
