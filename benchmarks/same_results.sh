#!/usr/bin/env bash
# Do two source trees train and evaluate bit for bit alike? For refactors that must change nothing.
#
#   bash benchmarks/same_results.sh OLD_TREE NEW_TREE [OUT_DIR]
#
# e.g. `git worktree add /tmp/old <commit>` then `bash benchmarks/same_results.sh /tmp/old .`.
# Each tree runs the same fixed short runs through its own CLI (`python -m mamlflow`, with
# PYTHONPATH set to the tree), one thread, built-in plugins only:
#   sin      sinusoid, 300 iterations, batched kernel, validation every 100 (50 tasks)
#   sinloop  sinusoid with metasgd, 100 iterations, loop kernel
#   nav      navigation (MAML-TRPO), 3 iterations, exactly 40 episodes per evaluation step
#   navppo   navigation with the ppo outer optimizer, 2 iterations
# then `metaflow eval --json`, and compares the eval JSON, metrics.jsonl (less its timings) and
# the final parameters and learned tensors, byte for byte. Exits 1 on any difference.
set -euo pipefail
old=$(cd "$1" && pwd); new=$(cd "$2" && pwd)
out=${3:-$(mktemp -d)}
PY=${PYTHON:-python}

runs() {  # runs TREE DIR
    mkdir -p "$2" && cd "$2"
    export PYTHONPATH=$1 MAMLFLOW_AUTOLOAD_PLUGINS=0 OMP_NUM_THREADS=1 MAMLFLOW_THREADS=1
    local m=("$PY" -m mamlflow)
    "${m[@]}" run --plugin sinusoid --out sin --set train.iterations=300 --set train.log_every=50 \
        --set kernel.strategy=batched --set train.val_every=100 --set train.val_tasks=50 >/dev/null
    "${m[@]}" eval sin --json --tasks 200 --no-plots >sin.json
    "${m[@]}" run --plugin sinusoid --out sinloop --set train.iterations=100 \
        --set train.log_every=50 --set kernel.strategy=loop --set algorithm.name=metasgd >/dev/null
    "${m[@]}" eval sinloop --json --tasks 100 --no-plots >sinloop.json
    "${m[@]}" run --plugin navigation --out nav --set train.iterations=3 \
        --set train.val_every=null --set task.eval_timesteps=null >/dev/null
    "${m[@]}" eval nav --json --tasks 10 --no-plots >nav.json
    "${m[@]}" run --plugin navigation --out navppo --set train.iterations=2 --set outer.name=ppo \
        --set train.val_every=null --set task.eval_timesteps=null >/dev/null
    "${m[@]}" eval navppo --json --tasks 10 --no-plots >navppo.json
}

(runs "$old" "$out/old")
(runs "$new" "$out/new")
"$PY" - "$out/old" "$out/new" <<'PY'
import json, sys
from pathlib import Path

import torch

old, new = map(Path, sys.argv[1:])
same = True
for run in ("sin", "sinloop", "nav", "navppo"):
    def records(root: Path) -> list[dict]:
        rows = [json.loads(line) for line in (root / run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in ("elapsed", "tasks_per_s")} for r in rows]

    def tensors(root: Path) -> dict:
        ckpt = torch.load(root / run / "checkpoint.pt", weights_only=True)
        return {**ckpt["params"], **{f"learnable {k}": v for k, v in ckpt["learnables"].items()}}

    a, b = tensors(old), tensors(new)
    checks = {
        "eval": (old / f"{run}.json").read_bytes() == (new / f"{run}.json").read_bytes(),
        "metrics": records(old) == records(new),
        "parameters": a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a),
    }
    same &= all(checks.values())
    print(run, ", ".join(f"{k} {'identical' if ok else 'DIFFER'}" for k, ok in checks.items()))
    print("   ", (new / f"{run}.json").read_text().strip()[:160])
sys.exit(0 if same else 1)
PY
