"""The sinusoid paper schedule on a quiet machine and with one core kept busy by another process.

Starts the competing load itself (one Python process spinning, at normal priority), runs
``metaflow run --plugin sinusoid`` in a fresh process for each case, and reports wall times and
what the run chose (kernel and threads, from its log). Cases:

* ``quiet``: nothing else running, ``kernel.threads=auto``;
* ``busy``: one core taken, ``kernel.threads=auto``;
* ``busy, 2 threads``: one core taken, ``kernel.threads=2`` (what every run did before threads
  were planned), on ``--fixed-iterations`` iterations and projected to the schedule, since the
  whole schedule takes half an hour that way;
* ``metaflow bench --plugin sinusoid`` with the core taken: what ``auto`` picks against the loop.

::

    python benchmarks/busy_core.py --out docs/results/busy_core.json
    python benchmarks/busy_core.py --render docs/results/busy_core.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TABLE = "busy_core"
ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def _busy_core(on: bool) -> Iterator[None]:
    """One process spinning on a core for the duration (nothing when ``on`` is False)."""
    if not on:
        yield
        return
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(1.0)  # let it take its core
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()


def _metaflow(*args: str) -> list[str]:
    return [sys.executable, "-m", "mamlflow", *args]


def _train(iterations: int, threads: str, busy: bool) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MAMLFLOW_THREADS")}
    with tempfile.TemporaryDirectory(prefix="busy-core-") as tmp, _busy_core(busy):
        start = time.perf_counter()
        done = subprocess.run(
            _metaflow("run", "--plugin", "sinusoid", "--out", f"{tmp}/run",
                      "--set", f"train.iterations={iterations}",
                      "--set", f"kernel.threads={threads}"),
            capture_output=True, text=True, env=env, cwd=ROOT,
        )  # fmt: skip
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"metaflow run failed: {done.stderr[-2000:]}")
    log = done.stderr + done.stdout
    kernel = re.search(r"kernel: (\S+)", log)
    chosen = re.findall(r"threads: (\d+) \(", log)
    switches = re.findall(r"threads: (\d+) -> (\d+)", log)
    return {
        "iterations": iterations,
        "threads_setting": threads,
        "busy": busy,
        "seconds": seconds,
        "kernel": kernel.group(1) if kernel else None,
        "threads": int(chosen[0]) if chosen else None,
        "switches": [list(map(int, s)) for s in switches],
    }


def _bench(busy: bool) -> dict[str, Any]:
    with _busy_core(busy):
        done = subprocess.run(
            _metaflow("bench", "--plugin", "sinusoid", "--json"),
            capture_output=True, text=True, cwd=ROOT,
        )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"metaflow bench failed: {done.stderr[-2000:]}")
    report = json.loads(done.stdout)
    rates = {r["strategy"]: r["tasks_per_s"] for r in report["results"] if not r.get("error")}
    picked = report["auto"]["strategy"]
    return {"busy": busy, "auto": picked, "tasks_per_s": rates, "reason": report["auto"]["reason"]}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    runs = [
        _train(args.iterations, "auto", busy=False),
        _train(args.iterations, "auto", busy=True),
        _train(args.fixed_iterations, "2", busy=True),
    ]
    return {
        "table": TABLE,
        "script": "benchmarks/busy_core.py",
        "runs": runs,
        "bench_busy": _bench(busy=True),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
    }


def render(report: dict[str, Any]) -> str:
    """The Markdown table docs/results.md shows for ``report`` (tests/docs holds them equal)."""
    quiet, busy, fixed = report["runs"]
    full = quiet["iterations"]
    projected = fixed["seconds"] * full / fixed["iterations"]
    lines = [
        "| case | iterations | wall time | × quiet | kernel | threads |",
        "| --- | --- | --- | --- | --- | --- |",
    ]

    def row(label: str, run: dict[str, Any], seconds: float, note: str = "") -> str:
        threads = "—" if run["threads"] is None else str(run["threads"])
        if run["switches"]:
            threads += ", then " + ", ".join(f"{a} → {b}" for a, b in run["switches"])
        return (
            f"| {label} | {run['iterations']:,}{note} | {seconds:,.0f} s | "
            f"{seconds / quiet['seconds']:.2f}× | `{run['kernel']}` | {threads} |"
        )

    lines.append(row("quiet, `kernel.threads=auto`", quiet, quiet["seconds"]))
    lines.append(row("one core busy, `kernel.threads=auto`", busy, busy["seconds"]))
    lines.append(
        row(
            "one core busy, `kernel.threads=2` (before)",
            fixed,
            projected,
            f" (ran {fixed['iterations']:,} in {fixed['seconds']:,.0f} s; projected)",
        )
    )
    bench = report["bench_busy"]
    rates = bench["tasks_per_s"]
    picked = bench["auto"]
    lines += [
        "",
        f"`metaflow bench --plugin sinusoid` with the core busy: `auto` picks `{picked}`, "
        f"{rates.get(picked, float('nan')):,.0f} tasks/s against the loop's "
        f"{rates['loop']:,.0f} ({rates.get(picked, float('nan')) / rates['loop']:.1f}×).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=70_000, help="the paper's schedule")
    parser.add_argument("--fixed-iterations", type=int, default=5_000)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--render", type=Path, help="print the table of a JSON report and exit")
    args = parser.parse_args()
    if args.render:
        print(render(json.loads(args.render.read_text())), end="")
        return
    report = measure(args)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(render(report), end="")


if __name__ == "__main__":
    main()
