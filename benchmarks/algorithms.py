"""The algorithm table of docs/results.md: each algorithm trained and evaluated by the CLI.

Each row is ``metaflow run --plugin PRESET --set algorithm.name=ALGO --set train.iterations=N``
followed by ``metaflow eval RUN_DIR --json``, in fresh processes, exactly what a user types.
Prints a Markdown table (and writes ``algorithms.json`` next to the runs)::

    python benchmarks/algorithms.py sinusoid --iterations 5000 --out /tmp/algos
    MAMLFLOW_DATA=/path/to/data python benchmarks/algorithms.py omniglot --iterations 1000

Not a pytest benchmark: a row takes minutes, and the numbers are accuracies, not speeds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

# algorithm -> the preset that pairs it with the family (None: the family's own, renamed algo)
ROWS: dict[str, dict[str, tuple[str, tuple[str, ...]]]] = {
    "sinusoid": {
        "maml": ("sinusoid", ()),
        "fomaml": ("sinusoid", ("algorithm.name=fomaml",)),
        "reptile": ("sinusoid-reptile", ()),
        "anil": ("sinusoid", ("algorithm.name=anil",)),
        "metasgd": ("sinusoid-metasgd", ()),
        "mamlpp": ("sinusoid", ("algorithm.name=mamlpp", "inner.steps=2")),
    },
    "omniglot": {
        "maml": ("omniglot", ()),
        "fomaml": ("omniglot", ("algorithm.name=fomaml",)),
        "reptile": ("omniglot-reptile", ()),
        "anil": ("omniglot-anil", ()),
        "metasgd": ("omniglot-metasgd", ()),
        "mamlpp": ("omniglot-mamlpp", ()),
    },
}


def _cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "mamlflow", *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"metaflow {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("family", choices=sorted(ROWS))
    parser.add_argument("--iterations", type=int, required=True)
    parser.add_argument("--out", type=Path, default=Path("algorithm-runs"))
    parser.add_argument("--only", default="", help="comma-separated algorithms (default: all)")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()
    wanted = [a for a in args.only.split(",") if a] or list(ROWS[args.family])
    rows = []
    for algorithm in wanted:
        preset, sets = ROWS[args.family][algorithm]
        run_dir = args.out / f"{args.family}-{algorithm}"
        run_args = ["run", "--plugin", preset, "--out", str(run_dir)]
        for item in (*sets, f"train.iterations={args.iterations}", *args.sets):
            run_args += ["--set", item]
        start = time.perf_counter()
        _cli(*run_args)
        train_s = time.perf_counter() - start
        evaluated = json.loads(_cli("eval", str(run_dir), "--json", "--no-plots"))
        results = evaluated.get("results", [evaluated])
        rows.append(
            {
                "algorithm": algorithm,
                "command": "metaflow " + " ".join(run_args),
                "train_s": train_s,
                "results": results,
            }
        )
        print(f"{algorithm}: {train_s:.0f} s, {results}", file=sys.stderr, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.family}-algorithms.json").write_text(json.dumps(rows, indent=1))
    for row in rows:
        cells = []
        for r in row["results"]:
            steps = ", ".join(
                f"{s}: {m:.3g} ± {c:.2g}"
                for s, m, c in zip(r["steps"], r["mean"], r["ci95"], strict=True)
            )
            cells.append(f"K={r['shots']} {r['metric']} [{steps}]")
        print(f"| {row['algorithm']} | {'; '.join(cells)} | {row['train_s']:.0f} s |")


if __name__ == "__main__":
    main()
