"""``kill -9`` at random points of ``metaflow run`` and ``metaflow eval``: nothing is ever lost.

A killed process runs no handler and no ``finally``; whatever it was writing stays half-written.
The kill points are drawn from a seeded generator, so each run of the test tries the same ones
(where exactly they land depends on the machine's speed, and is counted and printed).
"""

from __future__ import annotations

import random
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from mamlflow.core import rundir
from mamlflow.engine import load_checkpoint

from ._harness import (
    ITERATIONS,
    Process,
    Reference,
    assert_same_run,
    metaflow_here,
    resume_args,
    run_args,
    start,
    strict_load,
    temporaries,
    wait_until,
)

KILL_POINTS = 8
EVAL_KILLS = 4
SEED = 14
WRITE_S = 0.001
"""At most this long after its temporary file appears, a checkpoint is still being written."""


@dataclass(frozen=True)
class KillPoint:
    """Where to ``kill -9`` one process.

    ``start``: ``delay`` seconds after it wrote config.json, before its first checkpoint;
    ``time``: at ``fraction`` of its expected life (startup included);
    ``write``: ``delay`` seconds into its checkpoint write at ``fraction`` of what it has to do.
    """

    kind: str
    fraction: float = 0.0
    delay: float = 0.0


def _kill_points(rng: random.Random) -> list[KillPoint]:
    """The first lands after the run wrote its config but before any checkpoint (the directory
    must stay reusable), the others inside checkpoint writes (two in three) or anywhere."""
    points = [KillPoint("start", delay=rng.uniform(0, 0.005))]
    for i in range(1, KILL_POINTS):
        if i % 3 == 2:
            points.append(KillPoint("time", fraction=rng.uniform(0.2, 0.95)))
        else:
            points.append(KillPoint("write", fraction=rng.random(), delay=rng.uniform(0, WRITE_S)))
    return points


def _kill(process: Process, point: KillPoint, run_dir: Path, life_s: float, remaining: int) -> None:
    """``kill -9`` ``process`` at ``point`` (unless it ends first); wait for it."""
    started = time.monotonic()
    if point.kind == "start":
        if wait_until((run_dir / rundir.CONFIG).is_file, process):
            time.sleep(point.delay)
    elif point.kind == "time":
        while process.running() and time.monotonic() - started < point.fraction * life_s:
            time.sleep(0.001)
    else:
        before = temporaries(run_dir, rundir.CHECKPOINT)  # an earlier kill's, not this process's
        target = 1 + int(point.fraction * 0.9 * remaining)
        seen: set[str] = set()

        def writing_target() -> bool:
            now = temporaries(run_dir, rundir.CHECKPOINT) - before
            seen.update(now)
            return len(seen) >= target and bool(now)

        if wait_until(writing_target, process):
            time.sleep(point.delay)
    process.popen.kill()
    code = process.wait()
    # Killed, or it finished before the kill point: anything else is a failure of its own.
    assert code in (-9, 0), process.stderr()


def _killed_again_and_again(
    points: list[KillPoint], run_dir: Path, logs: Path, reference: Reference
) -> Counter[str]:
    """Start the run, kill it at the first point, start it again (``--resume``, or ``--out``
    while it has no checkpoint), kill it at the next, …, then let it finish; check what each
    kill left. Returns how the kills landed."""
    counts: Counter[str] = Counter()
    leftovers: set[str] = set()  # temporaries killed processes left, until a start removes them
    done = 0  # the iteration of the last checkpoint
    for n, point in enumerate([*points, None]):
        checkpointed = (run_dir / rundir.CHECKPOINT).is_file()
        args = resume_args(run_dir) if checkpointed else run_args(run_dir)
        if not checkpointed and (run_dir / rundir.CONFIG).is_file():
            counts["fresh starts in a killed attempt's directory"] += 1
        process = start(args, logs, f"{n}-{point.kind if point else 'last'}")
        if point is None:
            assert process.wait() == 0, process.stderr()
        else:
            _kill(process, point, run_dir, reference.window(ITERATIONS - done), ITERATIONS - done)
            killed = process.popen.returncode == -9
            counts[f"{point.kind} kills" if killed else "kill points after the end"] += 1

        left = temporaries(run_dir)
        if {t for t in left - leftovers if t.startswith(f".{rundir.CHECKPOINT}.")}:
            counts["kills inside a checkpoint write"] += 1
        if (run_dir / rundir.CHECKPOINT).is_file():
            ckpt = load_checkpoint(run_dir)  # complete and readable, never half-written
            assert ckpt.iteration >= done, "a kill took a checkpoint back in time"
            progressed, done = ckpt.iteration > done, ckpt.iteration
        else:
            assert done == 0, "a kill lost a checkpoint"
            counts["kills before the first checkpoint"] += 1
            progressed = False
        if progressed:
            # It trained, so it started, and a start removes what killed writers left.
            assert not leftovers & left, f"a start kept a killed writer's temporaries: {left}"
            leftovers = set()
        leftovers |= left
    assert temporaries(run_dir) == set()
    assert_same_run(run_dir, reference.run_dir)
    return counts


@pytest.mark.slow
def test_kill_9_at_random_points_of_a_run_loses_nothing(
    reference: Reference, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """After each kill: the last checkpoint loads, the next start removes the temporaries, and
    the next ``metaflow run --resume`` (``--out`` again when no checkpoint was written yet)
    goes on; the run that finally completes is bitwise the uninterrupted one."""
    points = _kill_points(random.Random(SEED))
    counts = _killed_again_and_again(points, tmp_path / "run", tmp_path / "logs", reference)
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    print(f"kill -9 of metaflow run: {len(points)} kill points: {summary}")
    record_property("kill_points", len(points))
    record_property("kill_outcomes", dict(counts))
    # The reusable-directory path ran: a killed attempt's config.json, and no checkpoint.
    assert counts["fresh starts in a killed attempt's directory"] >= 1


@pytest.fixture
def evaluated(
    reference: Reference, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[Path, bytes, bytes, float]:
    """A finished run with an ``eval.json`` (old), and what the evaluation the test kills
    writes when it completes (new), with how long it took."""
    run_dir, twin = tmp_path / "run", tmp_path / "twin"
    shutil.copytree(reference.run_dir, run_dir)
    shutil.copytree(run_dir, twin)
    # In this process (cheaper): only that its results differ from the new ones matters.
    assert metaflow_here(capsys, _eval_args(run_dir, tasks=20))[0] == 0
    t0 = time.monotonic()
    process = start(_eval_args(twin, tasks=50), tmp_path / "logs", "new")
    assert process.wait() == 0, process.stderr()
    took = time.monotonic() - t0
    old, new = (run_dir / rundir.EVAL).read_bytes(), (twin / rundir.EVAL).read_bytes()
    assert old != new
    return run_dir, old, new, took


def _eval_args(run_dir: Path, tasks: int) -> list[str]:
    return ["eval", str(run_dir), "--tasks", str(tasks), "--no-plots"]


@pytest.mark.slow
def test_kill_9_during_eval_leaves_the_old_or_the_new_eval_json(
    evaluated: tuple[Path, bytes, bytes, float],
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    """After each kill, eval.json is the old file or the new one, whole and strict JSON, and
    the checkpoint it evaluated is untouched."""
    run_dir, old, new, took = evaluated
    checkpoint = (run_dir / rundir.CHECKPOINT).read_bytes()
    rng = random.Random(SEED)
    counts: Counter[str] = Counter()
    for n in range(EVAL_KILLS):
        (run_dir / rundir.EVAL).write_bytes(old)
        left = temporaries(run_dir, rundir.EVAL)  # an earlier kill's: this eval removes them
        process = start(_eval_args(run_dir, tasks=50), tmp_path / "logs", f"eval-{n}")
        if n % 2:
            deadline = time.monotonic() + rng.uniform(0.3, 1.0) * took
            while process.running() and time.monotonic() < deadline:
                time.sleep(0.001)
        else:
            before = temporaries(run_dir, rundir.EVAL)
            if wait_until(lambda b=before: bool(temporaries(run_dir, rundir.EVAL) - b), process):
                time.sleep(rng.uniform(0, 0.001))
        process.popen.kill()
        assert process.wait() in (-9, 0), process.stderr()
        data = (run_dir / rundir.EVAL).read_bytes()
        assert data in (old, new), f"eval.json is neither the old nor the new one: {data[:200]!r}"
        strict_load(data)
        assert (run_dir / rundir.CHECKPOINT).read_bytes() == checkpoint
        counts["old eval.json" if data == old else "new eval.json"] += 1
        if temporaries(run_dir, rundir.EVAL) - left:
            counts["kills inside the eval.json write"] += 1
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    print(f"kill -9 of metaflow eval: {EVAL_KILLS} kill points: {summary}")
    record_property("eval_kill_points", EVAL_KILLS)
    record_property("eval_kill_outcomes", dict(counts))


def test_a_killed_evals_temporary_is_removed_by_the_next_eval(
    reference: Reference, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(reference.run_dir, run_dir)
    left = run_dir / f".{rundir.EVAL}.killed.tmp"  # what a kill inside the write leaves
    left.write_bytes(b'{\n  "results": [\n    {\n      "metric": "ms')
    assert metaflow_here(capsys, _eval_args(run_dir, tasks=10))[0] == 0
    assert strict_load((run_dir / rundir.EVAL).read_bytes())
    assert not left.exists()
