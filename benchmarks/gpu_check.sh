#!/usr/bin/env bash
# The GPU check, in one call of at most 10 minutes on a machine with one CUDA GPU:
#   1. the CUDA parity tests (pytest -m gpu: every strategy against the loop, a run end to end);
#   2. only where torch sees several GPUs: sinusoid trained by 1 process and by one process per
#      GPU (`metaflow run --nproc-per-node N`, nccl), the same parameters, step time against the
#      number of processes and the all_reduce's cost (benchmarks/distributed.py);
#   3. `metaflow bench` for Omniglot 5-way 1-shot (15 query/class, 32 tasks), second order;
#   4. end to end: the Omniglot 5-way 1-shot preset trained for a fixed number of iterations
#      (benchmarks/train_e2e.py: end-to-end iterations/s beside the same kernel's alone, host
#      syncs per step, the projected time of the 60,000-iteration schedule), then evaluated;
#   5. a timed MiniImagenet 5-way 1-shot training run (the `miniimagenet` preset) on the synthetic
#      full-shape set (benchmarks/make_synthetic_miniimagenet.py writes it first, unless
#      GPU_CHECK_MINI_DATA names a MiniImagenet folder), its iterations/s and the projected time
#      of the full 60,000-iteration schedule;
#   6. `metaflow bench` for Omniglot first order and for sinusoid;
#   7. `full`: the whole 60,000-iteration Omniglot 5-way 1-shot schedule and `metaflow eval`
#      (the paper's 98.7 ± 0.4%), only where section 4's projection fits in the time left;
# then a short table. Sections run in order of importance under one overall deadline, so a slow
# machine still ends in time with the table of whatever finished. GPU_CHECK_SECTIONS picks
# sections by name (gpu, multi, bench2, e2e, mini, bench1, sinusoid, full; default: all), e.g.
# the full schedule in one call of its own, after a first call projected that it fits:
#   GPU_CHECK_SECTIONS=e2e,full GPU_CHECK_BUDGET=570 bash benchmarks/gpu_check.sh
#
# Needs: mamlflow importable by $PYTHON (installed, or PYTHONPATH=. from the repo root) and
# Omniglot where mamlflow finds it (MAMLFLOW_DATA=<root> with <root>/omniglot/images_*.zip).
#
#   bash benchmarks/gpu_check.sh                  # results in ./gpu_check_out
#   GPU_CHECK_OUT=/tmp/out GPU_CHECK_BUDGET=540 GPU_CHECK_E2E_ITERATIONS=2000 bash benchmarks/gpu_check.sh
# A dry run on any machine (tiny sizes, CPU): GPU_CHECK_DEVICE=cpu GPU_CHECK_SMALL=1.
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
OUT_DIR=${GPU_CHECK_OUT:-gpu_check_out}
BUDGET=${GPU_CHECK_BUDGET:-540}            # seconds for everything
E2E_IT=${GPU_CHECK_E2E_ITERATIONS:-2000}    # iterations of the end-to-end Omniglot run
RUN_DIR=${GPU_CHECK_RUN_DIR:-$(mktemp -d)/omniglot-5w1s}
FULL_DIR=$(mktemp -d)/omniglot-5w1s-full
SECTIONS=,${GPU_CHECK_SECTIONS:-gpu,multi,bench2,e2e,mini,bench1,sinusoid,full},
FULL=()    # GPU_CHECK_FULL_ITERATIONS: a shorter "full" schedule, for a dry run
if [[ -n ${GPU_CHECK_FULL_ITERATIONS:-} ]]; then
    FULL=(--set "train.iterations=$GPU_CHECK_FULL_ITERATIONS")
    E2E_EXTRA="--schedule-iterations $GPU_CHECK_FULL_ITERATIONS"
fi
SMALL=()   # --set overrides of the dry run: a few tasks, so a CPU gets through every section
if [[ ${GPU_CHECK_SMALL:-0} == 1 ]]; then
    SMALL=(--set train.meta_batch_size=4 --set train.log_every=10 --set train.val_every=20
        --set train.val_tasks=8 --set eval.tasks=8)
fi
MINI_S=${GPU_CHECK_MINI_SECONDS:-90}        # train.time_limit of the MiniImagenet run
MINI_DATA=${GPU_CHECK_MINI_DATA:-$(mktemp -d)/miniimagenet}
MINI_RUN_DIR=$(mktemp -d)/miniimagenet-5w1s
DEVICE=${GPU_CHECK_DEVICE:-cuda}           # cpu: a dry run of this script on any machine
STRATEGIES=loop,batched,compiled,cudagraphs
[[ $DEVICE == cpu ]] && STRATEGIES=loop,batched
export PY OUT_DIR E2E_IT RUN_DIR FULL_DIR DEVICE MINI_S MINI_DATA MINI_RUN_DIR PYTHONUNBUFFERED=1
export SMALL_SETS="${SMALL[*]}" FULL_SETS="${FULL[*]}" E2E_EXTRA=${E2E_EXTRA:-}
mkdir -p "$OUT_DIR"
DEADLINE=$(( $(date +%s) + BUDGET ))
SUMMARY=()

log() { echo "[gpu_check $(date +%T)] $*" >&2; }

# section KEY NAME LIMIT_S CMD...: run CMD with the smaller of LIMIT_S and the time left, if
# GPU_CHECK_SECTIONS names KEY.
section() {
    local key=$1 name=$2 limit=$3
    shift 3
    if [[ $SECTIONS != *,$key,* ]]; then
        return 0
    fi
    local left=$(( DEADLINE - $(date +%s) ))
    if (( left < 20 )); then
        SUMMARY+=("$name: skipped (out of time)")
        log "$name: skipped, ${left}s left"
        return 0
    fi
    (( limit > left )) && limit=$left
    log "$name (limit ${limit}s)"
    local start rc
    start=$(date +%s)
    # bash -c: timeout runs programs, and sections are shell functions
    timeout --signal=INT --kill-after=15 "$limit" bash -c '"$@"' _ "$@"
    rc=$?
    local took=$(( $(date +%s) - start ))
    if (( rc == 0 )); then
        SUMMARY+=("$name: ok (${took}s)")
    elif (( rc == 124 || rc == 130 )); then
        SUMMARY+=("$name: TIMED OUT after ${took}s")
    else
        SUMMARY+=("$name: FAILED rc=$rc (${took}s)")
    fi
    return 0
}

log "environment"
if ! "$PY" - "$DEVICE" <<'EOF' | tee "$OUT_DIR/environment.txt"; then
import sys, torch, mamlflow
ok = torch.cuda.is_available() or sys.argv[1] == "cpu"
name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, mamlflow {mamlflow.__version__}, cuda {torch.version.cuda}, gpu {name}")
sys.exit(0 if ok else 1)
EOF
    log "no CUDA device or mamlflow not importable: nothing to check"
    exit 1
fi

bench() {  # bench NAME ARGS...: one `metaflow bench --json` into $OUT_DIR/NAME.json
    local name=$1
    shift
    "$PY" -m mamlflow bench --device "$DEVICE" --json "$@" >"$OUT_DIR/$name.json"
}
export -f bench

section gpu "pytest -m gpu" 150 "$PY" -m pytest tests/kernels/test_gpu.py -m gpu -q -p no:cacheprovider
NGPU=$("$PY" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
NPROC=$NGPU
[[ $DEVICE == cpu ]] && NPROC=2   # the dry run: gloo, 2 processes
export NPROC
multi() {
    "$PY" benchmarks/distributed.py --device "$DEVICE" --nproc "1,$NPROC" --iterations 300 \
        --json >"$OUT_DIR/distributed.json"
}
export -f multi
if (( NPROC > 1 )); then
    section multi "multi-process x$NPROC" 120 multi
else
    SUMMARY+=("multi-process: skipped ($NGPU GPU)")
fi
section bench2 "bench omniglot 2nd" 150 bench bench_omniglot_second --plugin omniglot --order second \
    --set task.query=15 --strategies "$STRATEGIES"
e2e() {
    # shellcheck disable=SC2086 # SMALL_SETS is a list of words
    "$PY" benchmarks/train_e2e.py --preset omniglot --device "$DEVICE" --iterations "$E2E_IT" \
        --out "$RUN_DIR" --json "$OUT_DIR/e2e_omniglot.json" $E2E_EXTRA $SMALL_SETS &&
        "$PY" -m mamlflow eval "$RUN_DIR" --json --no-plots >"$OUT_DIR/eval_omniglot.json"
    local rc=$?
    cp "$RUN_DIR/metrics.jsonl" "$OUT_DIR/metrics_omniglot.jsonl" 2>/dev/null
    return $rc
}
export -f e2e
section e2e "end-to-end omniglot 5w1s, $E2E_IT iterations" 300 e2e
mini() {
    if [[ ! -f $MINI_DATA/train.csv && ! -f $MINI_DATA/mini-imagenet-cache-train.pkl ]]; then
        "$PY" benchmarks/make_synthetic_miniimagenet.py "$MINI_DATA" >&2 || return 1
    fi
    "$PY" -m mamlflow run --plugin miniimagenet --device "$DEVICE" --out "$MINI_RUN_DIR" \
        --set "task.data_dir=$MINI_DATA" --set "train.time_limit=$MINI_S" --set train.log_every=5
    local rc=$?
    cp "$MINI_RUN_DIR/metrics.jsonl" "$OUT_DIR/metrics_miniimagenet.jsonl" 2>/dev/null
    return $rc
}
export -f mini
section mini "train miniimagenet 5w1s" $(( MINI_S + 150 )) mini
section bench1 "bench omniglot 1st" 120 bench bench_omniglot_first --plugin omniglot --order first \
    --set task.query=15 --strategies "$STRATEGIES"
section sinusoid "bench sinusoid 2nd" 90 bench bench_sinusoid_second --plugin sinusoid --order second \
    --strategies "$STRATEGIES"

# The whole schedule, where the end-to-end run's projection (+10%) and an evaluation fit.
full() {
    # shellcheck disable=SC2086
    "$PY" -m mamlflow run --plugin omniglot --device "$DEVICE" --out "$FULL_DIR" \
        --set "train.time_limit=$1" $FULL_SETS $SMALL_SETS &&
        "$PY" -m mamlflow eval "$FULL_DIR" --json --no-plots >"$OUT_DIR/eval_full.json"
    local rc=$?
    cp "$FULL_DIR/metrics.jsonl" "$OUT_DIR/metrics_full.jsonl" 2>/dev/null
    return $rc
}
export -f full
if [[ $SECTIONS == *,full,* ]]; then
    need=$("$PY" -c 'import json, sys
try:
    print(int(json.load(open(sys.argv[1]))["projected_schedule_s"] * 1.1))
except Exception:
    print(-1)' "$OUT_DIR/e2e_omniglot.json")
    left=$(( DEADLINE - $(date +%s) - 120 ))   # 120 s kept for the evaluation
    if (( need < 0 )); then
        SUMMARY+=("full schedule: skipped (no end-to-end projection)")
    elif (( need > left )); then
        SUMMARY+=("full schedule: skipped (projected ${need}s, ${left}s left)")
    else
        section full "full schedule omniglot 5w1s (projected ${need}s)" $(( left + 120 )) full "$left"
    fi
fi

"$PY" - "$OUT_DIR" "${SUMMARY[@]}" <<'EOF' | tee "$OUT_DIR/summary.txt"
import json, os, sys
from pathlib import Path

out, sections = Path(sys.argv[1]), sys.argv[2:]
print((out / "environment.txt").read_text().strip())
print()
for line in sections:
    print(f"  {line}")
print()
try:
    dist = json.loads((out / "distributed.json").read_text())
    for r in dist["runs"]:
        threads = r["threads_per_process"] or "default"
        print(f"multi-process sinusoid: {r['processes']} process(es), {threads} threads, "
              f"{r['step_ms']:.2f} ms/step, param diff vs 1 process {r['param_rel_diff_vs_1']:.1e}")
    for n, sizes in dist["collective"].items():
        cost = ", ".join(f"{k}: {v['median_us']:.0f} us" for k, v in sizes.items())
        print(f"multi-process all_reduce alone, {n} processes: {cost}")
    print()
except (OSError, ValueError, KeyError):
    pass
print(f"{'bench':<24} {'strategy':<14} {'tasks/s':>10} {'x loop':>8} {'peak MiB':>9} {'compile s':>9}")
for name in ("bench_omniglot_second", "bench_omniglot_first", "bench_sinusoid_second"):
    path = out / f"{name}.json"
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        print(f"{name:<24} (no result)")
        continue
    rows = {r["strategy"]: r for r in report["results"]}
    loop = (rows.get("loop") or {}).get("tasks_per_s")
    for strategy, r in rows.items():
        tps = r.get("tasks_per_s")
        if tps is None:
            print(f"{name:<24} {strategy:<14} error: {r.get('error')}")
            continue
        ratio = f"{tps / loop:.1f}x" if loop else "-"
        mem, comp = r.get("peak_mem_mib"), r.get("compile_s")
        mem = f"{mem:.0f}" if mem is not None else "-"
        comp = f"{comp:.1f}" if comp is not None else "-"
        print(f"{name:<24} {strategy:<14} {tps:>10.1f} {ratio:>8} {mem:>9} {comp:>9}")
    auto = report.get("auto") or {}
    print(f"{name:<24} auto -> {auto.get('strategy')}: {auto.get('reason')}")
print()
def projection(name, path):
    """A run's steady iterations/s (from its first to its last metrics record) and the 60,000
    iterations of the paper's schedule at that rate."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        lines = []
    records = [r for r in (json.loads(l) for l in lines if l.strip()) if "elapsed" in r]
    if len(records) < 2:
        print(f"{name} run: no metrics")
        return
    first, last = records[0], records[-1]
    rate = (last["iteration"] - first["iteration"]) / max(last["elapsed"] - first["elapsed"], 1e-9)
    print(f"{name} run: {last['iteration']} iterations in {last['elapsed']:.0f} s "
          f"(compile included); steady {rate:.1f} it/s incl. validation -> "
          f"60,000 iterations ~ {60000 / rate / 60:.1f} min + start-up")

def e2e(path):
    """The end-to-end run beside its kernel alone (benchmarks/train_e2e.py's report)."""
    try:
        r = json.loads(path.read_text())
    except (OSError, ValueError):
        print("end-to-end omniglot 5w1s: no result")
        return
    num = lambda x, f: "-" if x is None else format(x, f)  # noqa: E731
    syncs = r.get("host_syncs_between_records") or {}
    print(f"{'end to end, omniglot 5w1s':<34} {'it/s':>9}")
    print(f"{'kernel alone (' + r['strategy'] + ')':<34} {num(r['kernel_it_s'], '9.1f')}")
    print(f"{'training, steady (incl. val/ckpt)':<34} {num(r['e2e_steady_it_s'], '9.1f')}"
          f"   {num(r['e2e_over_kernel'], '.0%')} of the kernel's")
    print(f"{'training, overall (incl. start-up)':<34} {num(r['e2e_overall_it_s'], '9.1f')}"
          f"   {r['iterations']} iterations in {r['wall_s']:.0f} s, start-up {num(r['startup_s'], '.0f')} s")
    print(f"host syncs per step between records: mean {num(syncs.get('mean'), '.2f')}, "
          f"max {syncs.get('max', '-')} over {syncs.get('steps', 0)} steps")
    p = r.get("projected_schedule_s")
    print(f"{r['schedule_iterations']:,} iterations projected: {num(p and p / 60, '.1f')} min")


def evaluation(name, path):
    try:
        ev = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        print(f"{name} eval: no result ({type(err).__name__})")
        return
    for r in ev["results"] if "results" in ev else [ev]:
        curve = ", ".join(f"{s}: {m:.3f}±{c:.3f}" for s, m, c in zip(r["steps"], r["mean"], r["ci95"]))
        print(f"{name} eval ({r['tasks']} tasks, {r['shots']}-shot) {r['metric']} by steps: {curve}")


e2e(out / "e2e_omniglot.json")
evaluation(f"omniglot 5w1s ({os.environ['E2E_IT']} iterations)", out / "eval_omniglot.json")
projection("miniimagenet 5w1s", out / "metrics_miniimagenet.jsonl")
projection("omniglot 5w1s full schedule", out / "metrics_full.jsonl")
evaluation("omniglot 5w1s full schedule (paper: 0.987±0.004)", out / "eval_full.json")
EOF
