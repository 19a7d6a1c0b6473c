"""Several processes, one run: shards of the meta-batch, one summed meta-gradient per step.

A meta-batch of ``B`` tasks is the same for any number of processes: tasks are sampled from
``(seed, iteration, global task index)``, and each process takes a contiguous slice of the global
indices (``Dist.shard``). Every kernel scales its shard's loss and gradients by ``1 / B``, so the
sum over processes of the shard results is the mean over the whole meta-batch, which one
flattened ``all_reduce(SUM)`` per step computes. Rank 0 broadcasts the parameters at the start,
so every process applies the same update to the same θ and they never drift apart.

Processes are started by ``torchrun`` (directly, or by ``metaflow run --nproc-per-node N``), which
sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE``; ``from_env`` reads them.
Without them the run is one process, and a ``Dist()`` does no collective at all.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

from ..core import ConfigError, MamlflowError
from .components import resolve_device
from .threads import THREADS_ENV, fixed_threads, usable_cores

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DIST_TIMEOUT_ENV",
    "THREADS_ENV",
    "Dist",
    "DistributedError",
    "check_device",
    "from_env",
    "launched_by_torchrun",
    "threads_per_process",
]

DIST_TIMEOUT_ENV = "MAMLFLOW_DIST_TIMEOUT"

DEFAULT_TIMEOUT_S = 1800.0
"""How long a collective waits for the other processes before it gives up (seconds).

A dead process is noticed at once without it: its sockets close, so the others' collective fails
immediately, and torchrun's agent terminates the rest of its node. The timeout only ends a run
whose process hangs alive. It must exceed the longest legitimate gap between two collectives,
which is rank 0's alone: choosing and compiling a kernel (minutes for conv-4 on a small CPU) or
a validation, while the others wait in the next all_reduce. Hence half an hour, torch's own
default for gloo; set ``MAMLFLOW_DIST_TIMEOUT`` (seconds) to change it.
"""

_T = TypeVar("_T")


class DistributedError(MamlflowError):
    """A collective failed: another process of the run died, or cannot be reached.

    Its exit code (3) tells the launcher that this process only lost its peers, so the failure
    it reports is the one that caused it.
    """

    exit_code = 3


def _one_line(exc: BaseException) -> str:
    """The first non-blank line of an error, without gloo's source-location prefix."""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    if first.startswith("[") and "] " in first:  # "[../gloo/transport/tcp/pair.cc:534] ..."
        first = first.split("] ", 1)[1]
    # gloo goes on with advice for its own developers after the first sentence.
    first = first.split(". ", 1)[0]
    return first or type(exc).__name__


@dataclass(frozen=True)
class Dist:
    """Where this process stands in a run: its rank among ``world_size`` processes.

    ``Dist()`` is a single process: every collective returns at once without calling
    ``torch.distributed``, so a one-process run is exactly the code path it always was.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    def __post_init__(self) -> None:
        if not (0 <= self.rank < self.world_size and 0 <= self.local_rank < self.local_world_size):
            raise ValueError(
                f"rank {self.rank} of {self.world_size} (local {self.local_rank} of "
                f"{self.local_world_size}) is not a place in a run"
            )

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run directory, validates and reports."""
        return self.rank == 0

    def shard(self, batch_size: int) -> Tensor:
        """This rank's contiguous slice of the global task indices ``0..batch_size-1``.

        Balanced: shard sizes differ by at most one, the larger ones first, so rank 0 always has
        a task. A rank gets none when there are more processes than tasks.
        """
        base, extra = divmod(batch_size, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return torch.arange(start, start + base + (self.rank < extra))

    @contextmanager
    def _collective(self, what: str) -> Iterator[None]:
        try:
            yield
        except DistributedError:
            raise
        except RuntimeError as exc:  # DistBackendError, DistNetworkError, gloo's own errors
            detail = _one_line(exc)
            if "timed out" in detail.lower() or "timeout" in detail.lower():
                why = (
                    f"no answer from the other processes within {_timeout_s():.0f} s (raise "
                    f"{DIST_TIMEOUT_ENV}=SECONDS if a step or a validation really takes longer)"
                )
            else:
                why = f"another process of this run stopped or cannot be reached ({detail})"
            raise DistributedError(f"rank {self.rank}: {what} failed: {why}") from exc

    def all_reduce_(self, flat: Tensor) -> Tensor:
        """Sum ``flat`` over all processes, in place; returns it. One collective call."""
        if self.world_size > 1:
            import torch.distributed as dist

            with self._collective("the step's all_reduce"):
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        return flat

    def broadcast_(self, tensors: Sequence[Tensor]) -> None:
        """Overwrite ``tensors`` (same dtype and device) with rank 0's, in one collective."""
        if self.world_size == 1 or not tensors:
            return
        import torch.distributed as dist

        flat = torch.cat([t.detach().reshape(-1) for t in tensors])
        with self._collective("the broadcast of the parameters"):
            dist.broadcast(flat, src=0)
        with torch.no_grad():
            offset = 0
            for t in tensors:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()

    def broadcast_object(self, obj: _T, what: str = "a broadcast") -> _T:
        """Rank 0's ``obj`` (picklable) on every process; the others pass anything, e.g. None."""
        if self.world_size == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        with self._collective(what):
            dist.broadcast_object_list(box, src=0)
        return box[0]  # type: ignore[return-value]

    def barrier(self, what: str = "waiting for the other processes") -> None:
        """Return once every process got here."""
        if self.world_size > 1:
            import torch.distributed as dist

            with self._collective(what):
                dist.barrier()

    def shutdown(self) -> None:
        """Leave the process group (a no-op for one process, or if it is already gone)."""
        if self.world_size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def launched_by_torchrun() -> bool:
    """Whether torchrun (or a launcher that sets its variables) started this process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or "TORCHELASTIC_RUN_ID" in os.environ


def _timeout_s() -> float:
    raw = os.environ.get(DIST_TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ConfigError([f"{DIST_TIMEOUT_ENV}: {raw!r} is not a positive number of seconds"])
    return value


def threads_per_process(local_world_size: int) -> int:
    """CPU threads for each of ``local_world_size`` processes on this machine.

    The machine's cores (those this process may run on) shared evenly, at least one each:
    more threads than cores makes the processes preempt each other inside every matmul.
    ``MAMLFLOW_THREADS=N`` overrides it. ``OMP_NUM_THREADS`` cannot, because torchrun sets it
    to 1 for every process whenever it is unset.
    """
    fixed = fixed_threads("auto", max(local_world_size, 1))
    return usable_cores() if fixed is None else fixed[0]


def check_device(device: str | torch.device, local_world_size: int) -> torch.device:
    """The run's device for ``local_world_size`` processes per machine, or a ``ConfigError``.

    On CUDA every process takes the GPU of its local rank, so the device must not name one, and
    the machine needs a GPU per process.
    """
    resolved = resolve_device(device) if isinstance(device, str) else device
    if resolved.type != "cuda" or local_world_size == 1:
        return resolved
    if resolved.index is not None:
        raise ConfigError(
            [
                f"device: {resolved} names one GPU, but with several processes each one uses "
                "cuda:LOCAL_RANK; pass --device cuda (or auto)"
            ]
        )
    count = torch.cuda.device_count()
    if local_world_size > count:
        raise ConfigError(
            [
                f"device: {local_world_size} processes on this machine but {count} GPUs; start "
                f"at most {count} per machine (--nproc-per-node {count}) or use --device cpu"
            ]
        )
    return resolved


def from_env(device: str | torch.device = "cpu") -> Dist:
    """This process's place in the run torchrun started, with the process group initialised.

    Reads ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE``; without them (or
    with ``WORLD_SIZE=1``) it returns ``Dist()`` and touches nothing. Otherwise it picks the
    backend from the run's ``device`` (``nccl`` for CUDA, where each process uses
    ``cuda:LOCAL_RANK``; ``gloo`` on CPU), sets the CPU threads of this process
    (``threads_per_process``) and joins the group, with ``DEFAULT_TIMEOUT_S`` per collective.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist()
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    resolved = check_device(device, local_world_size)
    if resolved.type == "cuda":
        # Every "cuda" tensor of this process now lands on its own GPU.
        torch.cuda.set_device(local_rank)
    torch.set_num_threads(threads_per_process(local_world_size))
    place = Dist(rank, world_size, local_rank, local_world_size)
    if not dist.is_initialized():
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        options: dict[str, object] = {}
        if backend == "nccl":
            options["device_id"] = torch.device("cuda", local_rank)
        try:
            with place._collective("joining the other processes (torch.distributed rendezvous)"):
                dist.init_process_group(
                    backend, timeout=datetime.timedelta(seconds=_timeout_s()), **options
                )
        except ValueError as exc:  # e.g. WORLD_SIZE set by hand, MASTER_ADDR missing
            raise DistributedError(
                f"WORLD_SIZE={world_size} but torchrun's environment is incomplete "
                f"({_one_line(exc)}); start the run with torchrun or metaflow run "
                "--nproc-per-node N"
            ) from exc
    return place
