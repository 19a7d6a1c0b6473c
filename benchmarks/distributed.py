"""Step time against the number of processes, and what the step's one all_reduce costs.

Two measurements, each in fresh processes started the way a user starts them:

1. **Training runs.** ``metaflow run --plugin sinusoid`` with 1 process and with
   ``--nproc-per-node N`` for each N of ``--nproc``, the same config (``kernel.strategy`` fixed,
   so every run times the same kernel). The step time is rank 0's wall-clock per iteration
   between its first and last metrics records, so start-up and the first step are left out; it
   includes sampling, the kernel, the all_reduce, the optimizer and logging. Each run's final
   parameters are compared with the 1-process run's (largest difference / largest entry).
2. **The collective alone.** ``torchrun --nproc-per-node N`` of this file with ``--collective``:
   each process times ``Dist.all_reduce_`` of a flat buffer of the size the trainer sends
   (θ's and φ's gradients, the loss and two stop votes) for sinusoid's MLP and Omniglot's
   conv-4, after a barrier each time so that one process's lateness is not counted as the
   collective's cost. The median over ``--repeats`` calls, rank 0's.

Prints a Markdown table, or one JSON object with ``--json``::

    python benchmarks/distributed.py                          # 1 and 2 processes, CPU
    python benchmarks/distributed.py --nproc 1,2,4 --device cuda --json

Not a pytest benchmark: every row is a separate multi-process launch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _payload_sizes() -> dict[str, int]:
    """The trainer's all_reduce payload per model: every parameter's gradient and 3 scalars."""
    from mamlflow.core import ModelIO
    from mamlflow.engine import PluginHost, resolve

    host = PluginHost()
    sizes = {}
    cfg = resolve(host, preset="sinusoid").config
    mlp = host.model(cfg.model.name)(cfg.model).build(ModelIO(input_shape=(1,), output_dim=1))
    sizes["sinusoid MLP 1-40-40-1"] = sum(p.numel() for p in mlp.parameters()) + 3
    conv_cfg = resolve(host, preset="omniglot").config
    conv = host.model(conv_cfg.model.name)(conv_cfg.model).build(
        ModelIO(input_shape=(1, 28, 28), output_dim=5)
    )
    sizes["Omniglot conv-4, 5-way"] = sum(p.numel() for p in conv.parameters()) + 3
    return sizes


def _collective_worker(device: str, repeats: int) -> None:
    """Runs in each process torchrun starts: time the all_reduce of each payload size."""
    import torch

    from mamlflow.engine import from_env

    dist = from_env(device)
    on = torch.device("cuda") if device.startswith("cuda") else torch.device("cpu")

    def sync() -> None:
        if on.type == "cuda":
            torch.cuda.synchronize()

    results = {}
    for name, numel in _payload_sizes().items():
        flat = torch.ones(numel, device=on)
        for _ in range(10):  # warm-up: connections, buffers
            dist.all_reduce_(flat)
        sync()
        times = []
        for _ in range(repeats):
            dist.barrier()
            sync()
            start = time.perf_counter()
            dist.all_reduce_(flat)
            sync()
            times.append(time.perf_counter() - start)
        results[name] = {"floats": numel, "median_us": statistics.median(times) * 1e6}
    if dist.is_main:
        print(json.dumps(results))
    dist.shutdown()


def _run(
    nproc: int, out: Path, device: str, iterations: int, sets: list[str], threads: int | None
) -> dict[str, Any]:
    args = [sys.executable, "-m", "mamlflow", "run", "--plugin", "sinusoid", "--out", str(out)]
    args += ["--device", device, "--set", f"train.iterations={iterations}"]
    args += ["--set", f"train.log_every={max(iterations // 10, 1)}"]
    for item in sets:
        args += ["--set", item]
    env = dict(os.environ)
    if nproc > 1:
        args += ["--nproc-per-node", str(nproc)]
    elif threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr[-2000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    first, last = records[0], records[-1]
    per_step = (last["elapsed"] - first["elapsed"]) / (last["iteration"] - first["iteration"])
    return {"step_ms": per_step * 1e3, "command_s": wall}


def _difference(a: Path, b: Path) -> float:
    from mamlflow.engine import load_checkpoint

    pa, pb = load_checkpoint(a).params, load_checkpoint(b).params
    largest = max(v.abs().max().item() for v in pa.values())
    return max((pa[k] - pb[k]).abs().max().item() for k in pa) / largest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", default="1,2", help="comma-separated process counts")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (one GPU per process)")
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--meta-batch-size", type=int, default=25, help="the paper's: 25")
    parser.add_argument("--strategy", default="batched", help="kernel.strategy of every run")
    parser.add_argument("--repeats", type=int, default=300, help="timed all_reduce calls")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--collective", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.collective:
        _collective_worker(args.device, args.repeats)
        return

    counts = [int(n) for n in args.nproc.split(",")]
    sets = [f"train.meta_batch_size={args.meta_batch_size}", f"kernel.strategy={args.strategy}"]
    cores = len(os.sched_getaffinity(0))
    report: dict[str, Any] = {
        "device": args.device,
        "cores": cores,
        "load_average": os.getloadavg(),
        "meta_batch_size": args.meta_batch_size,
        "strategy": args.strategy,
        "iterations": args.iterations,
        "runs": [],
        "collective": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cases: list[tuple[int, int | None]] = []
        for n in counts:
            if n == 1 and args.device == "cpu":
                # One process with every core, and with the thread count each of N shares.
                cases += [(1, None)] + [(1, max(1, cores // m)) for m in counts if m > 1]
            else:
                cases.append((n, None))
        seen = set()
        for n, threads in cases:
            if (n, threads) in seen:
                continue
            seen.add((n, threads))
            out = root / f"n{n}-t{threads}"
            row = {"processes": n, "threads_per_process": threads}
            row |= _run(n, out, args.device, args.iterations, sets, threads)
            baseline = root / "n1-tNone"
            row["param_rel_diff_vs_1"] = _difference(out, baseline) if n > 1 else 0.0
            report["runs"].append(row)
        for n in (n for n in counts if n > 1):
            done = subprocess.run(
                [
                    sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc-per-node={n}", __file__, "--collective",
                    "--device", args.device, "--repeats", str(args.repeats),
                ],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                raise SystemExit(f"the collective benchmark failed:\n{done.stderr[-2000:]}")
            report["collective"][n] = json.loads(done.stdout.strip().splitlines()[-1])

    if args.json:
        print(json.dumps(report))
        return
    load = ", ".join(f"{x:.1f}" for x in report["load_average"])
    print(f"{args.device}, {cores} cores (load average {load}); sinusoid, meta-batch")
    print(f"{args.meta_batch_size}, kernel {args.strategy}, {args.iterations} iterations\n")
    print("| processes | threads each | ms per step | tasks/s | max param diff vs 1 |")
    print("| --- | --- | --- | --- | --- |")
    for row in report["runs"]:
        threads = row["threads_per_process"] or ("all" if row["processes"] == 1 else "auto")
        tasks = args.meta_batch_size / row["step_ms"] * 1e3
        print(
            f"| {row['processes']} | {threads} | {row['step_ms']:.2f} | {tasks:,.0f} "
            f"| {row['param_rel_diff_vs_1']:.1e} |"
        )
    for n, sizes in report["collective"].items():
        print(f"\nall_reduce alone, {n} processes:")
        for name, r in sizes.items():
            print(f"  {name}: {r['floats']:,} floats, median {r['median_us']:.0f} µs")


if __name__ == "__main__":
    main()
