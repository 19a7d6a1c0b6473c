"""``metaflow bench`` and its measurement library, on the sinusoid preset with eager strategies.

Nothing here compiles (a compiled strategy costs 20-60 s on a small CPU): the strategies are loop
and batched, and ``train.iterations`` is kept below what makes ``auto`` try a compile.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from mamlflow.cli import main
from mamlflow.engine import (
    benchmark,
    build_components,
    count_flops,
    device_strategies,
    get_host,
    peak_memory_mib,
    resolve,
)

FAST = ("--plugin", "sinusoid", "--strategies", "loop,batched", "--repeats", "2")
SHORT_RUN = ("--set", "train.iterations=10")  # auto: too few iterations to compile
MIB = 2**20


def _invoke(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return exit_info.value.code or 0, out, err


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_json_is_one_object_on_stdout_with_the_documented_schema() -> None:
    # A real process: stdout must hold the JSON object and nothing else, whatever the status
    # line, the profiler or the logger write.
    r = subprocess.run(
        [sys.executable, "-m", "mamlflow", "bench", *FAST, *SHORT_RUN, "--json"],
        capture_output=True,
        text=True,
        env={**os.environ},
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert r.stdout.strip().count("\n") == 0

    assert isinstance(report["device"], str) and report["device"].startswith("cpu: ")
    assert report["peak_gflops"] > 0
    assert (report["preset"], report["order"], report["meta_batch"]) == ("sinusoid", "second", 25)
    assert [row["strategy"] for row in report["results"]] == ["loop", "batched"]
    for row in report["results"]:
        assert row["error"] is None
        for key in ("tasks_per_s", "median_ms", "speedup_vs_loop", "pct_peak", "peak_mem_mib"):
            assert isinstance(row[key], float) and row[key] > 0, (row["strategy"], key)
        assert row["compile_s"] == 0.0  # eager strategies compile nothing
        assert row["tasks_per_s"] == pytest.approx(25 / (row["median_ms"] / 1e3))
    loop, batched = report["results"]
    assert loop["speedup_vs_loop"] == 1.0 and loop["max_rel_err"] == 0.0
    assert 0 <= batched["max_rel_err"] < 1e-5  # float32 rounding, relative to max |g|
    assert report["flops_per_step"] > 0
    assert report["auto"]["strategy"] in ("loop", "batched")
    assert report["auto"]["reason"]


def test_table_lists_every_strategy_and_the_auto_choice(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = _invoke(capsys, "bench", *FAST, *SHORT_RUN, "--order", "first")
    assert code == 0
    for text in ("strategy", "tasks/s", "× loop", "loop", "batched", "first order", "auto →"):
        assert text in out, text
    assert not out.lstrip().startswith("{")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--strategies", "loop,bached"), "Unknown strategy 'bached'. Did you mean 'batched'?"),
        (("--order", "secnd"), "Unknown order 'secnd'. Did you mean 'second'?"),
        (("--strategies", "cudagraphs", "--device", "cpu"), "cudagraphs needs a CUDA device"),
    ],
)
def test_bad_arguments_are_one_error_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...], expected: str
) -> None:
    code, out, err = _invoke(capsys, "bench", "--plugin", "sinusoid", *args)
    assert code == 2
    assert out == ""
    lines = _error_lines(err)
    assert len(lines) == 1, err
    assert expected in lines[0]
    assert "Traceback" not in err


def test_cpu_peak_memory_sees_a_known_allocation() -> None:
    elements = 100 * MIB // 4  # float32

    def one_at_a_time() -> None:
        first = torch.ones(elements)
        del first
        second = torch.ones(elements)
        del second

    def two_at_once() -> None:
        first = torch.ones(elements)
        second = first * 2  # both alive here
        del first, second

    cpu = torch.device("cpu")
    single = peak_memory_mib(one_at_a_time, cpu)
    double = peak_memory_mib(two_at_once, cpu)
    assert single is not None and double is not None
    assert 100 <= single < 101  # a free before the next allocation lowers the running sum
    assert 200 <= double < 201
    assert peak_memory_mib(lambda: None, cpu) == 0


def test_flop_count_is_exact_for_a_matmul_and_counts_the_double_backward() -> None:
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    assert count_flops(lambda: a @ b) == 2 * 8 * 16 * 4

    host = get_host()
    components = build_components(resolve(host, preset="sinusoid").config, host)
    first = benchmark(components, strategies=["loop"], order="first", repeats=1, auto=False)
    second = benchmark(components, strategies=["loop"], order="second", repeats=1, auto=False)
    assert first.flops_per_step is not None and second.flops_per_step is not None
    assert 0 < first.flops_per_step < second.flops_per_step
    assert first.auto is None and first.result("loop").error is None


def test_a_failing_strategy_is_a_row_with_its_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # Injects a compiler-like failure into one strategy's construction; the others still run.
    host = get_host()
    components = build_components(resolve(host, preset="sinusoid").config, host)
    real = components.algorithm.make_meta_step  # the bench builds steps the algorithm's way

    def failing(*args: object, strategy: str, **kwargs: object):
        if strategy == "batched":
            raise RuntimeError("backend failed\nwith a long second line")
        return real(*args, strategy=strategy, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(components.algorithm, "make_meta_step", failing)
    report = benchmark(components, strategies=["batched"], repeats=1, auto=False)
    assert [row.strategy for row in report.results] == ["loop", "batched"]
    failed = report.result("batched")
    assert failed.error == "RuntimeError: backend failed"
    assert failed.tasks_per_s is None and failed.max_rel_err is None
    assert report.result("loop").error is None
    assert json.loads(json.dumps(report.as_json()))["results"][1]["tasks_per_s"] is None


def test_cpu_never_offers_cuda_graphs() -> None:
    assert "cudagraphs" not in device_strategies(torch.device("cpu"))
    assert device_strategies(torch.device("cpu"))[0] == "loop"
