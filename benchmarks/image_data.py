"""The image data path at MiniImagenet's shape: cache build, episode sampling, memory.

On a data set written by ``make_synthetic_miniimagenet.py`` (or the real MiniImagenet), with the
``miniimagenet`` preset (5-way 1-shot, 15 queries per class, meta-batch 4, 84 x 84 x 3, conv-4
with 32 filters and max-pooling, 5 inner steps), this measures in one process:

(a) the cache: building it from an empty ``task.cache_dir`` (a temporary folder), its size, and
    opening it once built;
(b) episode sampling against its consumer: ``family.sample`` of a meta-batch with the numba
    kernel and with its numpy twin (the family's fallback without numba), and the kernel alone,
    against the second-order meta-step in the strategy ``kernel.strategy=auto`` picks, timed by
    ``mamlflow.engine.benchmark`` in the same run. The goal: sampling ≥ 10x the meta-step's
    tasks/s, so that sampling (which ``engine/prefetch.py`` also overlaps with the step) never
    slows training;
(c) peak RSS (VmHWM) of a short ``metaflow run`` (``kernel.strategy=loop`` unless
    ``--rss-strategy``) in a fresh process, on the data set and on a smaller one (``--small``),
    next to each cache's size: the cache is memory-mapped, so RSS must not grow with the data
    set. Both runs use the ``imagefolder`` family (the same ``ImageFamily`` code
    with the same settings), since a smaller set cannot pass ``miniimagenet``'s count checks;
    with ``--family miniimagenet`` the full set is also run through ``miniimagenet``.
    ``imagefolder`` reads the CSV layout only, so both sets must be CSV sets.

It writes ``docs/results/image_data.json``, whose table docs/results.md shows (``--render``
prints it). Full scale (minutes of JPEG decoding, then the meta-steps and three training runs
of several GiB each; run it when the machine is otherwise idle)::

    python benchmarks/make_synthetic_miniimagenet.py /data/synthetic/miniimagenet
    python benchmarks/make_synthetic_miniimagenet.py /data/synthetic-150/miniimagenet \\
        --images-per-class 150
    python benchmarks/image_data.py /data/synthetic/miniimagenet \\
        --small /data/synthetic-150/miniimagenet
    python benchmarks/image_data.py --render

A smoke test on a tiny set, for testing the script only (``--family imagefolder`` skips the
64/16/20 x 600 count checks that a tiny set fails; the JSON goes elsewhere, since every JSON in
docs/results/ must have its table in docs/results.md)::

    python benchmarks/make_synthetic_miniimagenet.py /tmp/mini --classes 6,5,5 --images-per-class 40
    python benchmarks/make_synthetic_miniimagenet.py /tmp/mini-small --classes 6,5,5 \\
        --images-per-class 20
    python benchmarks/image_data.py /tmp/mini --small /tmp/mini-small --family imagefolder \\
        --json /tmp/image_data.json --calls 20 --repeats 1 --warmup 0 --rss-iterations 2 \\
        --set inner.steps=1 --set train.iterations=10
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

import mamlflow.kernels
from mamlflow.core import SPLITS, rng, strict_json
from mamlflow.engine import Components, benchmark, build_components, get_host, resolve

ROOT = Path(__file__).resolve().parents[1]
TABLE = "image_data"
TARGET_RATIO = 10.0
"""Sampling must supply at least this many times the tasks the meta-step consumes."""
FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    # family -> (preset, its --set overrides)
    "miniimagenet": ("miniimagenet", ()),
    # The imagefolder preset has the same task, model and schedule; these make it read the
    # CSV layout and scale pixels as the miniimagenet preset does.
    "imagefolder": ("imagefolder", ("task.layout=csv", "task.normalize=none")),
}
_MIB = 2**20

# Runs ``metaflow ARGS`` in this process and writes its memory lines of /proc/self/status (VmHWM
# is its peak RSS: of this process only, not of a cache build's decoding workers) and ru_maxrss.
# ru_maxrss alone would not do: Linux carries the peak of the process that forked the child
# across exec, so every child would report at least this script's own peak.
_RSS_CHILD = r"""
import json, resource, sys
out, sys.argv, code = sys.argv[1], ["metaflow", *sys.argv[2:]], 0
try:
    from mamlflow.cli import main
    main()
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
finally:
    status = {}
    try:
        for line in open("/proc/self/status"):
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                status[key] = int(value.split()[0])
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    unit = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    with open(out, "w") as f:
        json.dump({"exit": code, "maxrss_bytes": maxrss * unit, "status_kib": status}, f)
"""


# --- the run's components


def _sets(family: str, data: Path, cache_dir: Path, extra: list[str]) -> list[str]:
    return [
        *FAMILIES[family][1],
        f"task.data_dir={data}",
        f"task.cache_dir={cache_dir}",
        *extra,
    ]


def _components(family: str, data: Path, cache_dir: Path, args: argparse.Namespace) -> Components:
    host = get_host()
    overrides = {} if args.device is None else {"device": (args.device, "--device")}
    sets = _sets(family, data, cache_dir, args.set)
    resolved = resolve(host, preset=FAMILIES[family][0], sets=sets, overrides=overrides)
    return build_components(resolved.config, host)


def _cache_bytes(components: Components) -> int:
    path = Path(components.family.arrays.path)
    return path.stat().st_size + path.with_suffix(".json").stat().st_size


def _data_facts(data: Path) -> dict[str, Any]:
    """What the data set is: its ``synthetic.json`` when it has one, and its bytes on disk."""
    manifest = data / "synthetic.json"
    files = [p for p in data.rglob("*") if p.is_file()]
    return {
        "path": str(data),
        "files": len(files),
        "bytes": sum(p.stat().st_size for p in files),
        "synthetic": json.loads(manifest.read_text()) if manifest.is_file() else None,
    }


# --- (a) the cache


def _measure_cache(family: str, data: Path, cache_dir: Path, args: argparse.Namespace) -> Any:
    """(components, facts): the cache built from empty, timed, and reopened by a fresh family."""
    components = _components(family, data, cache_dir, args)
    start = time.perf_counter()
    arrays = components.family.arrays
    build_s = time.perf_counter() - start
    reopened = _components(family, data, cache_dir, args)
    start = time.perf_counter()
    reopened.family.arrays  # noqa: B018  # opening is the point
    open_ms = (time.perf_counter() - start) * 1e3
    facts = {
        "build_s": build_s,
        "open_ms": open_ms,
        "bytes": _cache_bytes(components),
        "shape": list(arrays.images.shape),
        "dtype": str(arrays.images.dtype),
    }
    return components, facts


# --- (b) sampling against the meta-step


def _timed(call: Callable[[int], object], calls: int, tasks: int) -> dict[str, Any]:
    """Per-call times of ``call(iteration)`` for iterations 1..calls (each a new meta-batch)."""
    times = []
    for iteration in range(1, calls + 1):
        start = time.perf_counter()
        call(iteration)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    p10, p90 = np.percentile(times, [10, 90]).tolist()
    return {
        "calls": calls,
        "tasks": tasks,
        "median_ms": median * 1e3,
        "p10_ms": p10 * 1e3,
        "p90_ms": p90 * 1e3,
        "tasks_per_s": tasks / median,
    }


@contextlib.contextmanager
def _numba_unavailable() -> Iterator[None]:
    """As on a machine without numba: the family falls back to the numpy twin (and warns; the
    warning is expected here, so it is not shown)."""
    probe, log = mamlflow.kernels.image_episodes_available, logging.getLogger("mamlflow.images")
    level = log.level
    mamlflow.kernels.image_episodes_available = lambda: False
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        mamlflow.kernels.image_episodes_available = probe
        log.setLevel(level)


def _measure_sampling(components: Components, calls: int) -> dict[str, Any]:
    """``family.sample`` of one meta-batch with the numba kernel and the twin; the kernel alone."""
    family, config = components.family, components.config
    tasks = config.train.meta_batch_size
    index = torch.arange(tasks)
    start = time.perf_counter()
    family.sample(config.seed, 0, index)  # checks numba's kernel against its twin, compiling it
    first_ms = (time.perf_counter() - start) * 1e3
    numba = _timed(lambda i: family.sample(config.seed, i, index), calls, tasks)
    twin_family = type(family)(config.task)
    with _numba_unavailable():
        twin_family.sample(config.seed, 0, index)
    twin = _timed(lambda i: twin_family.sample(config.seed, i, index), calls, tasks)
    arrays, pool = family.arrays, family.pools["train"]
    task = config.task

    def kernel(iteration: int) -> object:
        return mamlflow.kernels.sample_image_episodes(
            arrays.images,
            arrays.starts,
            arrays.counts,
            pool,
            rng.derive_key(config.seed, SPLITS["train"], iteration),
            index.numpy().astype(np.int64),
            task.ways,
            task.shots,
            task.query,
        )

    alone = _timed(kernel, calls, tasks)
    return {"first_call_ms": first_ms, "numba": numba, "twin": twin, "kernel_numba": alone}


def _measure_meta_step(components: Components, args: argparse.Namespace) -> dict[str, Any]:
    """The second-order meta-step in the strategy ``auto`` picks (and ``loop``, the reference)."""
    timing = {"repeats": args.repeats, "warmup": args.warmup}
    report = benchmark(components, strategies=["loop"], order="second", auto=True, **timing)
    assert report.auto is not None  # auto=True
    chosen = report.auto.strategy
    rows = list(report.results)
    if chosen not in {row.strategy for row in rows} and chosen != "failed":
        again = benchmark(components, strategies=[chosen], order="second", auto=False, **timing)
        rows += [row for row in again.results if row.strategy == chosen]
    row = next((r for r in rows if r.strategy == chosen), report.result("loop"))
    return {
        "order": "second",
        "auto": {"strategy": chosen, "reason": report.auto.reason},
        "strategy": row.strategy,
        "tasks_per_s": row.tasks_per_s,
        "median_ms": row.median_ms,
        "error": row.error,
        "inner_steps": report.inner_steps,
        "dtype": report.dtype,
        "device": report.device,
        "rows": [{k: v for k, v in vars(r).items() if v is not None or k == "error"} for r in rows],
    }


# --- (c) peak RSS of a short training run


def _rss_run(family: str, data: Path, cache_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """A short ``metaflow run`` in a fresh process on a cache built beforehand (here), so its
    peak RSS is training's: sampling from the memory map, the model, the meta-step."""
    components = _components(family, data, cache_dir, args)
    cache = _cache_bytes(components)
    with tempfile.TemporaryDirectory(prefix="image-data-rss-") as tmp:
        out = Path(tmp) / "usage.json"
        sets = [
            *_sets(family, data, cache_dir, args.set),
            f"train.iterations={args.rss_iterations}",
            f"kernel.strategy={args.rss_strategy}",
            "train.val_every=null",  # a validation would time the evaluation, not training
        ]
        cli = ["run", "--plugin", FAMILIES[family][0], "--out", str(Path(tmp) / "run")]
        cli += [f"--set={s}" for s in sets]
        cli += [] if args.device is None else ["--device", args.device]
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", _RSS_CHILD, str(out), *cli], capture_output=True, text=True
        )
        seconds = time.perf_counter() - start
        if done.returncode != 0 or not out.is_file():
            raise SystemExit(f"metaflow {' '.join(cli)} failed:\n{done.stderr[-3000:]}")
        usage = json.loads(out.read_text())
    status = usage["status_kib"]
    return {
        "family": family,
        "data": str(data),
        "images": int(components.family.arrays.images.shape[0]),
        "cache_bytes": cache,
        # VmHWM where Linux gives it (see _RSS_CHILD); ru_maxrss elsewhere.
        "peak_rss_bytes": status["VmHWM"] * 1024 if "VmHWM" in status else usage["maxrss_bytes"],
        "peak_rss_from": "VmHWM" if "VmHWM" in status else "ru_maxrss",
        "ru_maxrss_bytes": usage["maxrss_bytes"],
        "at_exit_kib": status,
        "seconds": seconds,
    }


def _measure_rss(args: argparse.Namespace, cache_dir: Path) -> dict[str, Any]:
    runs = []
    if args.family != "imagefolder":
        runs.append(_rss_run(args.family, args.data, cache_dir, args))
    for data in (args.data, *([args.small] if args.small else [])):
        runs.append(_rss_run("imagefolder", data, cache_dir, args))
        print(f"peak RSS on {data}: {runs[-1]['peak_rss_bytes'] / _MIB:,.0f} MiB", flush=True)
    return {"iterations": args.rss_iterations, "strategy": args.rss_strategy, "runs": runs}


# --- the report


def _machine(load_at_start: tuple[float, float, float]) -> dict[str, Any]:
    import numba

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average_start": list(load_at_start),
        "load_average_end": list(os.getloadavg()),
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Everything, in the order (a), (b), (c); caches in a temporary folder."""
    load_at_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="image-data-cache-") as tmp:
        cache_dir = Path(tmp)
        print("(a) building the cache", flush=True)
        components, cache = _measure_cache(args.family, args.data, cache_dir, args)
        print(f"    {cache['build_s']:.1f} s, {cache['bytes'] / _MIB:,.0f} MiB", flush=True)
        print("(b) sampling, then the meta-step (auto, second order)", flush=True)
        sampling = _measure_sampling(components, args.calls)
        meta_step = _measure_meta_step(components, args)
        print("(c) peak RSS of short training runs", flush=True)
        rss = _measure_rss(args, cache_dir)
    task = components.config.task
    consumed = meta_step["tasks_per_s"]
    ratios = {
        name: None if not consumed else sampling[name]["tasks_per_s"] / consumed
        for name in ("numba", "twin")
    }
    return {
        "table": TABLE,
        "script": "benchmarks/image_data.py",
        "family": args.family,
        "preset": FAMILIES[args.family][0],
        "sets": args.set,
        "data": _data_facts(args.data),
        "task": {k: getattr(task, k) for k in ("ways", "shots", "query", "image_size")},
        "meta_batch": components.config.train.meta_batch_size,
        "cache": cache,
        "sampling": sampling,
        "meta_step": meta_step,
        "ratio": {**ratios, "target": TARGET_RATIO},
        "rss": rss,
        "machine": _machine(load_at_start),
    }


def _mib(n: float) -> str:
    return f"{n / _MIB:,.0f} MiB" if n >= 10 * _MIB else f"{n / _MIB:,.1f} MiB"


def _rate(row: dict[str, Any]) -> str:
    return (
        f"{row['tasks_per_s']:,.0f} tasks/s (median {row['median_ms']:.2f} ms per "
        f"{row['tasks']} tasks, p10–p90 {row['p10_ms']:.2f}–{row['p90_ms']:.2f} ms)"
    )


def _ratio(value: float | None, target: float) -> str:
    if value is None:
        return "not measured (the meta-step failed)"
    verdict = "meets" if value >= target else "**misses**"
    return f"{value:,.0f}× ({verdict} the ≥ {target:g}× goal)"


def _at_exit(status: dict[str, int]) -> str:
    if "RssAnon" not in status or "RssFile" not in status:
        return ""
    anon, file = status["RssAnon"] * 1024, status["RssFile"] * 1024
    return f"; at exit {_mib(anon)} anonymous, {_mib(file)} file-backed"


def render(report: dict[str, Any]) -> str:
    """The Markdown table docs/results.md shows for ``report`` (tests/docs holds them equal)."""
    data, cache, sampling = report["data"], report["cache"], report["sampling"]
    step, ratio, machine = report["meta_step"], report["ratio"], report["machine"]
    shape = "×".join(str(n) for n in cache["shape"])
    task = report["task"]
    episode = f"{task['ways']}-way {task['shots']}-shot, {task['query']} queries"
    rows = [
        ("data set", f"{cache['shape'][0]:,} images, {_mib(data['bytes'])} on disk"),
        ("cache build (empty cache dir)", f"{cache['build_s']:,.1f} s"),
        ("cache size", f"{_mib(cache['bytes'])} ({shape} {cache['dtype']})"),
        ("cache open, once built", f"{cache['open_ms']:,.0f} ms"),
        (
            "first `family.sample` (kernel check and compile)",
            f"{sampling['first_call_ms']:,.0f} ms",
        ),
        (
            f"`family.sample`, numba ({report['meta_batch']} tasks, {episode})",
            _rate(sampling["numba"]),
        ),
        ("`family.sample`, numpy twin", _rate(sampling["twin"])),
        ("episode kernel alone (numba, uint8)", _rate(sampling["kernel_numba"])),
        (
            f"meta-step, second order, inner steps: {step['inner_steps']}, `auto` → "
            f"`{step['strategy']}`",
            "failed: " + str(step["error"])
            if step["tasks_per_s"] is None
            else f"{step['tasks_per_s']:,.2f} tasks/s (median {step['median_ms']:,.0f} ms)",
        ),
        ("sampling ÷ meta-step, numba", _ratio(ratio["numba"], ratio["target"])),
        ("sampling ÷ meta-step, numpy twin", _ratio(ratio["twin"], ratio["target"])),
    ]
    rss = report["rss"]
    for run in rss["runs"]:
        rows.append(
            (
                f"peak RSS, {rss['iterations']} iterations `{rss['strategy']}`, "
                f"`{run['family']}`, {run['images']:,} images",
                f"{_mib(run['peak_rss_bytes'])} (cache {_mib(run['cache_bytes'])}"
                + _at_exit(run.get("at_exit_kib", {}))
                + ")",
            )
        )
    load = machine["load_average_start"][0]
    rows.append(
        (
            "machine",
            f"{machine['cpus']} CPUs, torch threads: {machine['torch_threads']}, load "
            f"{load:.1f} at start, torch {machine['torch']}",
        )
    )
    lines = ["| quantity | value |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, nargs="?", help="the data set's folder (task.data_dir)")
    parser.add_argument("--small", type=Path, help="a smaller data set, for the RSS comparison")
    parser.add_argument(
        "--family",
        choices=sorted(FAMILIES),
        default="miniimagenet",
        help="imagefolder: for smoke tests on sets smaller than MiniImagenet only",
    )
    parser.add_argument("--calls", type=int, default=200, help="timed family.sample calls")
    parser.add_argument("--repeats", type=int, default=3, help="timed meta-steps per strategy")
    parser.add_argument("--warmup", type=int, default=1, help="untimed meta-steps per strategy")
    parser.add_argument("--rss-iterations", type=int, default=10)
    parser.add_argument(
        "--rss-strategy",
        default="loop",
        help="kernel.strategy of the RSS runs (another than loop is first checked against loop "
        "in float64, which sets the peak)",
    )
    parser.add_argument("--device", default=None, help="auto, cpu or cuda (default: the preset's)")
    parser.add_argument(
        "--set", action="append", default=[], help="dotted.key=value for every run (repeatable)"
    )
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "results" / f"{TABLE}.json")
    parser.add_argument("--render", action="store_true", help="print the saved JSON's table")
    args = parser.parse_args()
    if args.render:
        print(render(json.loads(args.json.read_text())), end="")
        return
    if args.data is None:
        parser.error("name the data set's folder (or --render)")
    report = measure(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(strict_json(report, indent=1) + "\n")
    print(f"wrote {args.json}; its table for docs/results.md:\n")
    print(render(report), end="")


if __name__ == "__main__":
    main()
