"""Run ``metaflow`` on a really full disk: a small tmpfs, in a user and mount namespace.

Started by ``test_full_disk.py`` as ``unshare -rm python _small_disk.py OUT DISK FREE``: mounts a
tmpfs of ``SIZE`` at DISK (a directory that exists), fills all but FREE bytes, and runs there

1. ``metaflow run`` until the disk is full (``OUT/fail.*``; the run directory then in
   ``OUT/after-failure``),
2. ``metaflow run --resume`` while the disk is completely full (``OUT/still-full.*``), and a new
   ``metaflow run`` in a new directory then (``OUT/full-new.*``),
3. the same run, ``--resume`` (or ``--out`` again) once the space is back (``OUT/resume.*``; the
   run directory then in ``OUT/final``).

Each step writes ``NAME.code``, ``NAME.out`` and ``NAME.err``. The mount dies with the namespace,
so what the test checks is copied out into OUT. Arguments after FREE are the run's ``--set``
items.
"""

from __future__ import annotations

import errno
import shutil
import subprocess
import sys
from pathlib import Path

SIZE = 1 << 20


def main() -> None:
    out, disk, free, *run_sets = sys.argv[1:]
    out_dir, disk_dir = Path(out), Path(disk)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", disk], check=True)
    filler = _fill(disk_dir / "filler", SIZE - int(free))
    run_dir = disk_dir / "run"
    sets = [arg for item in run_sets for arg in ("--set", item)]
    new_run = ["run", "--plugin", "sinusoid", "--out", str(run_dir), *sets]
    resume = ["run", "--resume", str(run_dir)]

    _metaflow(out_dir, "fail", new_run)
    shutil.copytree(run_dir, out_dir / "after-failure")
    checkpointed = (run_dir / "checkpoint.pt").is_file()
    rest = _fill(disk_dir / "rest", SIZE)  # whatever the failed run freed: the disk is full
    _metaflow(out_dir, "still-full", resume if checkpointed else new_run)
    _metaflow(out_dir, "full-new", [*new_run[:3], "--out", str(disk_dir / "new"), *sets])
    filler.unlink()
    rest.unlink()
    _metaflow(out_dir, "resume", resume if checkpointed else new_run)
    shutil.copytree(run_dir, out_dir / "final")


def _fill(path: Path, size: int) -> Path:
    """Write up to ``size`` bytes of zeros to ``path``, stopping where the disk is full."""
    block = bytes(4096)
    with path.open("wb", buffering=0) as f:
        try:
            while size > 0:
                size -= f.write(block[: min(size, len(block))])
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    return path


def _metaflow(out_dir: Path, name: str, args: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "mamlflow", *args], capture_output=True)
    (out_dir / f"{name}.code").write_text(str(done.returncode))
    (out_dir / f"{name}.out").write_bytes(done.stdout)
    (out_dir / f"{name}.err").write_bytes(done.stderr)


if __name__ == "__main__":
    main()
