"""A full disk: the run stops with one line, keeps its last checkpoint, and resumes bitwise.

Two ways to fill a disk. Where this machine lets an unprivileged user mount a small tmpfs (in a
user and mount namespace, ``unshare -rm``), a real one; everywhere, an injected one: the test's
own process runs ``metaflow`` with every file opened for writing in the run directory (which is
how ``atomic_write``, ``torch.save`` and the metrics files write) backed by a raw file that
accepts only the bytes still "free" and then fails like a full disk: a short write, then
``OSError(ENOSPC)``. The free bytes are drawn (seeded) so that the disk fills up before anything
was written, inside the first checkpoint or a later one, inside a metrics record, or anywhere.
"""

from __future__ import annotations

import errno
import io
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import torch

from mamlflow.cli import main
from mamlflow.core import ResourceError, rundir
from mamlflow.engine import Checkpoint, load_checkpoint, save_checkpoint, writing

from ._harness import (
    ENV,
    RUN_SETS,
    Reference,
    assert_same_run,
    metaflow_here,
    one_error_line,
    resume_args,
    run_args,
    temporaries,
)

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="names open files through /proc (Linux)"
)

SEED = 28  # ENOSPC
SHORT = ("train.iterations=30", "model.hidden=[64,64]")
"""The injected cases train in this process: short runs, compared with one in this process.
Its weights are larger than a file's buffer (``io.DEFAULT_BUFFER_SIZE``), so ``torch.save``
writes them past the buffer, straight to the raw file, as it does for any real model."""


class _Disk:
    """The free bytes left on the "disk" holding ``run_dir``, and what was written to it."""

    def __init__(self, run_dir: Path, free: int | None) -> None:
        self.run_dir = os.path.realpath(run_dir)
        self.free = free
        self.writes: list[tuple[str, int]] = []
        """(file name, bytes) of every write, in order."""

    def holds(self, file: Any) -> bool:
        path = f"/proc/self/fd/{file}" if isinstance(file, int) else os.fspath(file)
        try:
            real = os.path.realpath(path)
        except (OSError, TypeError):
            return False
        return real.startswith(self.run_dir + os.sep)

    def take(self, name: str, size: int) -> int:
        """How many of ``size`` bytes fit; raises ENOSPC when none does."""
        if self.free is not None and size > self.free:
            size, self.free = self.free, 0
            if size == 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), name)
        elif self.free is not None:
            self.free -= size
        self.writes.append((name, size))
        return size


class _DiskFile(io.FileIO):
    """A raw file on a ``_Disk``: its writes take free bytes, and fail once none is left."""

    def __init__(self, disk: _Disk, file: str | int, mode: str, closefd: bool, opener: Any):
        super().__init__(file, mode, closefd, opener)
        self.disk = disk
        self.label = _name(file)

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        return super().write(view[: self.disk.take(self.label, len(view))])


def _name(file: str | int) -> str:
    path = os.readlink(f"/proc/self/fd/{file}") if isinstance(file, int) else file
    return os.path.basename(path)


@contextmanager
def _full_disk(run_dir: Path, free: int | None) -> Iterator[_Disk]:
    """While inside, files opened for writing under ``run_dir`` live on a ``_Disk``."""
    disk = _Disk(run_dir, free)
    real_open, real_pwrite = io.open, os.pwrite

    def open_on_disk(
        file: Any,
        mode: str = "r",
        buffering: int = -1,
        encoding: Any = None,
        errors: Any = None,
        newline: Any = None,
        closefd: bool = True,
        opener: Any = None,
    ) -> Any:
        if not any(c in mode for c in "wax+") or not disk.holds(file):
            return real_open(file, mode, buffering, encoding, errors, newline, closefd, opener)
        raw_mode = "".join(c for c in mode if c in "rwax+")
        name = file if isinstance(file, int) else os.fspath(file)
        raw = _DiskFile(disk, name, raw_mode, closefd, opener)
        if buffering == 0:
            return raw
        size = io.DEFAULT_BUFFER_SIZE if buffering in (-1, 1) else buffering
        buffered = io.BufferedRandom(raw, size) if "+" in mode else io.BufferedWriter(raw, size)
        if "b" in mode:
            return buffered
        return io.TextIOWrapper(buffered, encoding, errors, newline, line_buffering=buffering == 1)

    def pwrite_on_disk(fd: int, data: bytes, offset: int) -> int:
        if disk.holds(fd):
            data = data[: disk.take(_name(fd), len(data))]
        return real_pwrite(fd, data, offset)

    io.open, os.pwrite = open_on_disk, pwrite_on_disk
    try:
        yield disk
    finally:
        io.open, os.pwrite = real_open, real_pwrite


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[str, int]]]:
    """The short run, uninterrupted, in this process; and the writes it made, in order."""
    run_dir = tmp_path_factory.mktemp("enospc") / "reference"
    output = io.StringIO()
    with (
        _full_disk(run_dir, None) as disk,
        redirect_stdout(output),
        redirect_stderr(output),
        pytest.raises(SystemExit) as exit_info,
    ):
        main(run_args(run_dir, *SHORT))
    assert exit_info.value.code in (0, None), output.getvalue()
    return run_dir, disk.writes


CASES = (
    "full from the start",
    "inside the first checkpoint",
    "inside a later checkpoint",
    "inside a metrics record",
    "anywhere",
    "anywhere else",
)


def _free_bytes(case: str, writes: list[tuple[str, int]]) -> tuple[int, int | None]:
    """The free bytes of ``case`` (seeded; from the reference run's ``writes``), and the
    iteration of the checkpoint the run must keep (0: none) if the case says."""
    rng = random.Random(f"{SEED} {case}")
    files: dict[str, tuple[int, int]] = {}  # each file written: (its first byte, bytes)
    records: list[tuple[int, int]] = []  # each metrics.jsonl line: (first byte, bytes)
    offset = 0
    for name, size in writes:
        if name == rundir.METRICS:
            records.append((offset, size))
        start, total = files.get(name, (offset, 0))
        files[name] = (start, total + size)
        offset += size
    checkpoints = [span for name, span in files.items() if name.startswith(".checkpoint.pt.")]
    assert len(checkpoints) == len(records) == 30
    if case == "full from the start":
        return 0, 0
    if case.startswith("anywhere"):
        return rng.randrange(offset), None
    # Clear of the ends: the metrics lines before vary by a few bytes from run to run.
    k = 1 if case == "inside the first checkpoint" else rng.randrange(2, len(checkpoints) + 1)
    if case == "inside a metrics record":
        start, size = records[k - 1]
        return start + rng.randrange(8, size - 8), k - 1  # record k comes before checkpoint k
    start, size = checkpoints[k - 1]
    return start + rng.randrange(256, size - 256), k - 1


@pytest.mark.parametrize("case", CASES)
def test_a_full_disk_stops_the_run_with_one_line_and_it_resumes_bitwise(
    case: str,
    uninterrupted: tuple[Path, list[tuple[str, int]]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    record_property: Callable[[str, object], None],
) -> None:
    """One ``error:`` line saying the disk is full and what to do; no temporary left; the last
    checkpoint intact; once the space is back, ``--resume`` (or ``--out`` again, when there was
    no checkpoint) ends bitwise the uninterrupted run."""
    reference, writes = uninterrupted
    free, expected = _free_bytes(case, writes)
    run_dir = tmp_path / "run"
    with _full_disk(run_dir, free):
        code, err = metaflow_here(capsys, run_args(run_dir, *SHORT))
    assert code == 1, err
    line = one_error_line(err)
    assert line.startswith("error: no space left on the device"), line
    assert not temporaries(run_dir), "a failed write left its temporary"
    if (run_dir / rundir.CHECKPOINT).is_file():
        kept = load_checkpoint(run_dir).iteration  # the previous one, intact
        assert "--resume" in line, line
        code, err = metaflow_here(capsys, resume_args(run_dir))
    else:
        kept = 0
        assert "no checkpoint was written yet" in line, line
        code, err = metaflow_here(capsys, run_args(run_dir, *SHORT))  # the directory is reusable
    assert code == 0, err
    assert_same_run(run_dir, reference)
    if expected is not None:
        assert kept == expected
    outcome = f"{case}: {free} bytes free, kept checkpoint {kept}: {line[7:]}"
    print("ENOSPC, injected:", outcome)
    record_property("enospc_injected_case", outcome)


def test_a_checkpoint_that_fills_the_disk_fails_with_the_disk_full_error(tmp_path: Path) -> None:
    """Wherever in ``torch.save`` the disk fills up (its zip writer reports a failed write as
    "unexpected pos" when it then writes the zip's end), the error says the disk is full, and
    the previous checkpoint and no temporary are left."""
    previous = Checkpoint(1, {"w": torch.zeros(3)}, {}, {}, {}, "loop", 0.0, False)
    save_checkpoint(tmp_path, previous)
    kept = (tmp_path / rundir.CHECKPOINT).read_bytes()
    weights = {"w": torch.ones(64, 256), "b": torch.ones(256)}  # 64 KiB: written straight through
    ckpt = Checkpoint(2, weights, {}, {}, {}, "loop", 0.0, False)
    rng = random.Random(SEED)
    for free in sorted(rng.sample(range(1, 66_000), 12)):
        with (
            _full_disk(tmp_path, free),
            pytest.raises(ResourceError, match=r"^no space left"),
            writing(rundir.CHECKPOINT, tmp_path),
        ):
            save_checkpoint(tmp_path, ckpt)
        assert (tmp_path / rundir.CHECKPOINT).read_bytes() == kept, free
        assert not temporaries(tmp_path), free


def _can_mount_a_small_disk(where: Path) -> bool:
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return False
    where.mkdir(parents=True, exist_ok=True)
    probe = f"mount -t tmpfs -o size=64k tmpfs {where}"
    try:
        done = subprocess.run(
            ["unshare", "-rm", "sh", "-c", probe], capture_output=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


@pytest.mark.slow
def test_a_really_full_disk_stops_the_run_with_one_line_and_it_resumes_bitwise(
    reference: Reference, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """On a real tmpfs (see ``_small_disk.py``): the run stops with one line, ``--resume`` and a
    new run on the still full disk too, and once the space is back the resumed run ends bitwise
    the uninterrupted one."""
    disk, out = tmp_path / "disk", tmp_path / "out"
    if not _can_mount_a_small_disk(disk):
        pytest.skip("cannot mount a small tmpfs here (no unprivileged user namespaces)")
    out.mkdir()
    # Free pages: ~20 hold config, lock, checkpoint and its temporary; the metrics grow into the
    # rest, a page every ~35 iterations, until a write finds the disk full.
    free = random.Random(SEED).randrange(21, 29) * 4096
    script = Path(__file__).with_name("_small_disk.py")
    args = [sys.executable, str(script), str(out), str(disk), str(free), *RUN_SETS]
    done = subprocess.run(["unshare", "-rm", *args], env=ENV, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode(errors="replace")

    def step(name: str) -> tuple[int, str]:
        return int((out / f"{name}.code").read_text()), (out / f"{name}.err").read_text()

    code, err = step("fail")
    assert code == 1, err
    line = one_error_line(err)
    assert line.startswith("error: no space left on the device"), line
    after = out / "after-failure"
    assert not temporaries(after)
    kept = load_checkpoint(after).iteration if (after / rundir.CHECKPOINT).is_file() else None
    for name in ("still-full", "full-new"):
        code, err = step(name)
        assert code == 1 and one_error_line(err).startswith("error: no space left on the device")
    code, err = step("resume")
    assert code == 0, err
    assert_same_run(out / "final", reference.run_dir)
    outcome = f"{free} bytes free: {line[7:]} (kept checkpoint {kept})"
    print("ENOSPC, real tmpfs:", outcome)
    record_property("enospc_real_case", outcome)
