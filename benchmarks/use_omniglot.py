"""`metaflow adapt` + `predict` on Omniglot's own PNG files against `metaflow eval`.

For ``--tasks`` tasks, draws ``ways`` characters of the run's meta-test split (its ``task.json``)
and one drawer, copies that drawer's 105×105 PNG of each character from the official zips into
``support/<character>/`` and the other 19 drawers' into ``queries/<character>/``, then runs
``metaflow adapt RUN --support support`` and ``metaflow predict ADAPTED --inputs queries``
exactly as a user would (in this process, through the real command-line app) and scores the
predicted class names. Beside it, ``metaflow eval``'s accuracy on the same run in both batch-norm
modes (``--transductive`` and ``--no-transductive``; ``predict`` is the second). Writes the JSON
the docs table is rendered from::

    python benchmarks/use_omniglot.py --run runs/omniglot --tasks 200 \\
        --out docs/results/use_omniglot.json
    python benchmarks/use_omniglot.py --render docs/results/use_omniglot.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

import mamlflow
from mamlflow.cli import main as cli

TABLE = "use_omniglot"
ZIPS = ("images_background.zip", "images_evaluation.zip")


def _cli_json(args: list[str]) -> list[dict[str, Any]]:
    """Run the command-line app in this process; its stdout's JSON objects."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            cli(args)
        except SystemExit as done:
            if done.code not in (0, None):
                raise RuntimeError(f"{' '.join(args)} exited {done.code}") from None
    text = out.getvalue().strip()
    if text.startswith("{") and "\n" in text and not text.splitlines()[1].startswith("{"):
        return [json.loads(text)]  # one indented object
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _drawings(data: Path, characters: list[str]) -> dict[str, list[tuple[Path, str]]]:
    """``character -> [(zip, member)]`` of its 20 drawings, in drawer order."""
    wanted = set(characters)
    found: dict[str, list[tuple[Path, str]]] = {c: [] for c in characters}
    for name in ZIPS:
        with zipfile.ZipFile(data / name) as z:
            for member in z.namelist():
                parts = member.split("/")
                if len(parts) >= 3 and member.endswith(".png"):
                    key = "/".join(parts[-3:-1])
                    if key in wanted:
                        found[key].append((data / name, member))
    for c in found:
        found[c].sort(key=lambda item: item[1])
    return found


_OPEN: dict[Path, zipfile.ZipFile] = {}


def _write(z: Path, member: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if z not in _OPEN:  # reading the central directory once, not once per file
        _OPEN[z] = zipfile.ZipFile(z)
    target.write_bytes(_OPEN[z].read(member))


def _adapt_and_predict(args: argparse.Namespace, ways: int, tmp: Path) -> dict[str, Any]:
    manifest = json.loads((args.run / "task.json").read_text())
    characters = list(manifest["characters"]["test"])
    drawings = _drawings(args.data, characters)
    rng = np.random.default_rng(args.seed)
    accuracies, seconds = [], []
    for t in range(args.tasks):
        chosen = [characters[i] for i in rng.choice(len(characters), ways, replace=False)]
        drawer = int(rng.integers(20))
        task = tmp / f"task{t}"
        for c in chosen:
            label = c.replace("/", "__")
            for d, (z, member) in enumerate(drawings[c]):
                where = "support" if d == drawer else "queries"
                _write(z, member, task / where / label / Path(member).name)
        start = time.perf_counter()
        _cli_json(["adapt", str(args.run), "--support", str(task / "support"), "--out",
                   str(task / "adapted"), "--json"])  # fmt: skip
        rows = _cli_json(["predict", str(task / "adapted"), "--inputs", str(task / "queries"),
                          "--json"])  # fmt: skip
        seconds.append(time.perf_counter() - start)
        correct = [Path(r["input"]).parent.name == r["class"] for r in rows]
        accuracies.append(sum(correct) / len(correct))
    a = np.array(accuracies)
    return {
        "tasks": args.tasks,
        "queries_per_task": len(rows),
        "mean": float(a.mean()),
        "ci95": float(1.96 * a.std(ddof=1) / math.sqrt(len(a))),
        "seconds_per_task": float(np.median(seconds)),
    }


def _evaluate(args: argparse.Namespace) -> dict[str, Any]:
    meta = mamlflow.load_run(args.run, device="cpu")
    config, out = meta.config, {}
    for mode in (True, False):
        cfg = config.model_copy(
            update={"eval": config.eval.model_copy(update={"transductive": mode})}
        )
        components = mamlflow.build_components(cfg, mamlflow.get_host())
        result, _ = mamlflow.evaluate(
            components,
            meta.params,
            meta.learnables,
            shots=config.task.shots,
            steps=config.eval.steps,
            tasks=args.eval_tasks,
            query=config.eval.query,
            batch_size=config.eval.batch_size,
            split="test",
        )
        out["transductive" if mode else "support_statistics"] = {
            "mean": result.mean[-1],
            "ci95": result.ci95[-1],
            "tasks": result.tasks,
        }
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    load_at_start = os.getloadavg()
    meta = mamlflow.load_run(args.run, device="cpu")
    cfg = meta.config
    with tempfile.TemporaryDirectory(prefix="use-omniglot-") as tmp:
        used = _adapt_and_predict(args, cfg.task.ways, Path(tmp))
    return {
        "table": TABLE,
        "script": "benchmarks/use_omniglot.py",
        "run": {
            "preset": cfg.preset,
            "iterations": meta.iteration,
            "ways": cfg.task.ways,
            "shots": cfg.task.shots,
            "steps": cfg.eval.steps,
            "strategy": cfg.kernel.strategy,
        },
        "adapt_predict": used,
        "eval": _evaluate(args),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "load_average_start": list(load_at_start),
        },
    }


def _pct(row: dict[str, Any]) -> str:
    return f"{100 * row['mean']:.1f} ± {100 * row['ci95']:.1f}%"


def render(report: dict[str, Any]) -> str:
    """The Markdown table docs/results.md shows for ``report`` (tests/docs holds them equal)."""
    run, used, ev = report["run"], report["adapt_predict"], report["eval"]
    lines = [
        "| how the test tasks were scored | tasks | accuracy |",
        "| --- | --- | --- |",
        f"| `metaflow eval` (query set normalised together: the paper's protocol) | "
        f"{ev['transductive']['tasks']} | {_pct(ev['transductive'])} |",
        f"| `metaflow eval --no-transductive` (each query by the support set's statistics) | "
        f"{ev['support_statistics']['tasks']} | {_pct(ev['support_statistics'])} |",
        f"| `metaflow adapt` on 1 PNG per character, `predict` on the other 19 drawers' PNGs | "
        f"{used['tasks']} | {_pct(used)} |",
    ]
    note = (
        f"\n{run['ways']}-way {run['shots']}-shot, {run['steps']} adaptation steps, the "
        f"`{run['preset']}` preset trained for {run['iterations']:,} iterations; adapt + "
        f"predict took {used['seconds_per_task']:.2f} s per task (median, both commands)."
    )
    return "\n".join(lines) + "\n" + note + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a trained 5-way (or N-way) Omniglot run")
    parser.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/omniglot"
    )
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--eval-tasks", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--render", type=Path, help="print the table of a JSON report and exit")
    args = parser.parse_args()
    if args.render:
        print(render(json.loads(args.render.read_text())), end="")
        return
    if args.run is None:
        parser.error("--run is required to measure")
    report = measure(args)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(render(report), end="")


if __name__ == "__main__":
    main()
