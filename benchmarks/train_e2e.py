"""End-to-end training speed beside the kernel's alone: what does the loop around the step cost?

Trains a preset for a fixed number of iterations through the engine, exactly as ``metaflow run``
does (the next meta-batch sampled in a background thread, pinned and copied without blocking on
CUDA, metrics read every ``log_every`` steps, validation, checkpoints), then times the kernel the
run chose on one meta-batch of that run, with nothing around it. It reports:

- end-to-end iterations/s: *steady* (from the first metrics record to the last, so start-up and
  compilation are left out; validation and checkpoints are in) and *overall* (wall-clock);
- the kernel-only iterations/s of the same compiled step (median of ``--kernel-repeats``);
- their ratio, the share of the kernel's speed the run keeps;
- on CUDA, host synchronisations per step between metrics records, counted by torch's sync debug
  mode (the loop is built to make none: ``tests/engine/test_trainer.py`` holds that on CPU);
- the projected time of the preset's own schedule (``train.iterations`` of the preset) at the
  steady rate, plus the start-up this run measured.

    python benchmarks/train_e2e.py --preset omniglot --iterations 2000 --device cuda \
        --out runs/e2e --json e2e.json

The run directory is a normal run: ``metaflow eval RUN`` evaluates it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from mamlflow.engine import PluginHost, Trainer, resolve


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    host = PluginHost()
    preset_iterations = (
        args.schedule_iterations or resolve(host, preset=args.preset).config.train.iterations
    )
    sets = (f"train.iterations={args.iterations}", f"device={args.device}", *args.set)
    config = resolve(host, preset=args.preset, sets=sets).config
    syncs = _SyncCounter(torch.device(config.device) if config.device != "auto" else None)
    started = time.perf_counter()
    trainer = Trainer(config, Path(args.out), host, on_step=syncs.step_done)
    with syncs:
        summary = trainer.fit()
    wall = time.perf_counter() - started
    records = _records(Path(args.out) / "metrics.jsonl")
    steady = _steady_rate(records)
    kernel = _kernel_rate(trainer, args.kernel_repeats)
    startup = wall - args.iterations / steady if steady else None
    report: dict[str, Any] = {
        "preset": args.preset,
        "device": str(trainer.components.device),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "iterations": summary.iteration,
        "meta_batch": config.train.meta_batch_size,
        "strategy": summary.strategy,
        "strategy_reason": summary.strategy_reason,
        "wall_s": wall,
        "e2e_overall_it_s": summary.iteration / wall,
        "e2e_steady_it_s": steady,
        "kernel_it_s": kernel,
        "e2e_over_kernel": steady / kernel if steady and kernel else None,
        "host_syncs_between_records": syncs.between_records(config.train),
        "startup_s": startup,
        "schedule_iterations": preset_iterations,
        "projected_schedule_s": (preset_iterations / steady + (startup or 0.0) if steady else None),
    }
    text = json.dumps(report, indent=1)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="omniglot")
    p.add_argument("--iterations", type=int, default=2000, help="iterations of the timed run")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True, help="the run directory (must not hold a run)")
    p.add_argument("--json", help="also write the report here")
    p.add_argument("--kernel-repeats", type=int, default=30)
    p.add_argument(
        "--schedule-iterations", type=int, help="the schedule to project (default: the preset's)"
    )
    p.add_argument("--set", action="append", default=[], help="KEY=VALUE, as metaflow run")
    return p.parse_args(argv)


def _records(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text().splitlines() if path.is_file() else []
    return [r for r in map(json.loads, filter(str.strip, lines)) if "elapsed" in r]


def _steady_rate(records: list[dict[str, Any]]) -> float | None:
    """Iterations/s from the first metrics record to the last: start-up and compile left out."""
    if len(records) < 2:
        return None
    first, last = records[0], records[-1]
    seconds = last["elapsed"] - first["elapsed"]
    return (last["iteration"] - first["iteration"]) / seconds if seconds > 0 else None


def _kernel_rate(trainer: Trainer, repeats: int) -> float | None:
    """The run's own (already compiled) meta-step alone on its first meta-batch, iterations/s."""
    selection, c = trainer.selection, trainer.components
    if selection is None:
        return None
    cfg = trainer.config
    tasks = torch.arange(cfg.train.meta_batch_size)
    raw = c.family.sample_raw(cfg.seed, 0, tasks).to(c.device)
    params, learnables = c.initial_params()
    batch = c.source.meta_batch(
        c.family.prepare(raw, c.dtype), params, learnables, seed=cfg.seed, iteration=0
    )
    args = (params, learnables, batch.support, batch.query, 1.0 / cfg.train.meta_batch_size)
    times = []
    for i in range(repeats + 3):
        _synchronize(c.device)
        start = time.perf_counter()
        selection.step(*args)
        _synchronize(c.device)
        if i >= 3:  # three warm-up calls
            times.append(time.perf_counter() - start)
    return 1.0 / statistics.median(times)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _SyncCounter:
    """Host synchronisations per step on CUDA, from torch's sync debug mode (warn)."""

    def __init__(self, device: torch.device | None) -> None:
        self.on = torch.cuda.is_available() and (device is None or device.type == "cuda")
        self.per_step: list[int] = []
        self._seen = 0
        self._caught: list[warnings.WarningMessage] = []
        self._context: Any = None

    def __enter__(self) -> _SyncCounter:
        if self.on:
            self._context = warnings.catch_warnings(record=True)
            self._caught = self._context.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.on:
            torch.cuda.set_sync_debug_mode("default")
            self._context.__exit__(*exc)

    def step_done(self, iteration: int, _record: object) -> None:
        if not self.on:
            return
        syncs = sum("synchroniz" in str(w.message) for w in self._caught[self._seen :])
        self._seen = len(self._caught)
        self.per_step.append(syncs)

    def between_records(self, train: Any) -> dict[str, float] | None:
        """Mean and largest count over the steps that write no record and select no kernel."""
        if not self.on or not self.per_step:
            return None
        quiet = [
            n
            for i, n in enumerate(self.per_step, start=1)
            if i > 1
            and i % train.log_every
            and (train.val_every is None or i % train.val_every)
            and i % train.checkpoint_every
        ]
        if not quiet:
            return None
        return {"mean": statistics.fmean(quiet), "max": max(quiet), "steps": len(quiet)}


if __name__ == "__main__":
    sys.exit(main())
