"""Callbacks: code that runs between meta-steps, never inside the compiled step.

A callback observes a run (``on_train_start``, ``on_log``, ``on_train_end``) and acts on it only
through its ``TrainerControl``: it may ask the run to stop or to write a checkpoint, and the
trainer honours those requests between steps. Its options are a frozen ``CallbackConfig``, set in
a run config under ``callbacks.<name>`` and validated like every other section.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, final

from .config import CallbackConfig, RunConfig
from .rundir import MetricsRecord

__all__ = ["Callback", "CallbackConfig", "TrainStart", "TrainSummary", "TrainerControl"]


class _ReadOnlyMapping(Mapping[str, Any]):
    """Mapping access to a dataclass's fields, for callbacks written against plain dicts."""

    def __getitem__(self, key: str) -> Any:
        if key not in self._keys():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def _keys(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(self))  # type: ignore[arg-type]


@dataclass(frozen=True, eq=False)
class TrainStart(_ReadOnlyMapping):
    """What ``Callback.on_train_start`` receives: the run as it (re)starts."""

    iteration: int
    """The iteration the run starts from (0, or the checkpoint's on a resume)."""
    config: RunConfig
    metric: str
    """The task family's metric (``mse``, ``accuracy``, ``return``); validation records carry it
    as ``val_<metric>``."""
    higher_is_better: bool
    """The metric's direction (False for ``mse`` only)."""
    best: float | None
    """The best validation value so far, restored on resume; None before any validation."""


@dataclass(frozen=True, eq=False)
class TrainSummary(_ReadOnlyMapping):
    """How a run ended: what ``Trainer.fit`` returns and ``Callback.on_train_end`` receives."""

    iteration: int
    iterations: int
    meta_loss: float | None
    """The last record's meta-loss (None if the run logged none)."""
    elapsed: float
    tasks_per_s: float
    strategy: str
    strategy_reason: str
    stopped_by: str
    """``"iterations"``, ``"time_limit"``, ``"interrupted"`` or the reason a callback gave
    ``TrainerControl.request_stop`` (e.g. ``"early_stopping"``)."""
    return_before: float | None = None
    """Rollout families: the last record's mean return before adaptation, and after."""
    return_after: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@final
class TrainerControl:
    """What a callback may ask of the run it observes; the trainer acts between steps.

    Requests only set flags (no lock, no I/O), so they are safe from any callback method and
    from a signal handler. The trainer reads them after each step's callbacks have run, so a
    checkpoint never holds a half-applied optimizer step.
    """

    def __init__(self) -> None:
        self._stop_reason: str | None = None
        self._checkpoint = False

    def request_stop(self, reason: str) -> None:
        """End the run after the current step, with a final ``checkpoint.pt``.

        ``reason`` (e.g. ``"early_stopping"``) becomes ``TrainSummary.stopped_by``. The first
        request wins: a later one cannot rename why the run stopped. A request made during the
        last step changes nothing: the run has reached ``train.iterations`` anyway.
        """
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError("request_stop needs a reason, e.g. request_stop('early_stopping')")
        if self._stop_reason is None:
            self._stop_reason = reason

    def request_checkpoint(self) -> None:
        """Write ``checkpoint.pt`` after the current step (once, however often it is asked)."""
        self._checkpoint = True

    @property
    def stop_reason(self) -> str | None:
        """Why a stop was requested, or ``None`` while the run goes on."""
        return self._stop_reason

    def take_checkpoint_request(self) -> bool:
        """For the trainer: whether a checkpoint was requested since the last call."""
        requested, self._checkpoint = self._checkpoint, False
        return requested


class Callback:
    """Observe a training run. Every method is optional; the defaults do nothing.

    Enabled by name in ``train.callbacks``; built with the run directory and its options (an
    instance of ``Config``, from ``callbacks.<name>`` in the run config). The trainer hands it a
    ``TrainerControl`` as ``control`` before ``on_train_start``. Only the process that owns the
    run directory (rank 0) calls them.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Config: ClassVar[type[CallbackConfig]] = CallbackConfig

    def __init__(self, run_dir: Path, config: CallbackConfig | None = None) -> None:
        config = self.Config() if config is None else config
        if not isinstance(config, self.Config):
            raise TypeError(
                f"{type(self).__name__} takes a {self.Config.__name__}, not "
                f"{type(config).__name__}; build run configs with mamlflow.resolve"
            )
        self.run_dir = run_dir
        self.config = config
        self._control: TrainerControl | None = None

    @classmethod
    def check_config(cls, run: RunConfig) -> str | None:
        """Why this callback cannot work with ``run``, as one line naming the fix; else None.

        Called when a config that enables the callback resolves, and again when a trainer is
        built, so a run that cannot work fails before it starts. Only pure checks of the config
        belong here: a saved run must still load where optional packages are missing.
        """
        return None

    @property
    def control(self) -> TrainerControl:
        """How this callback asks the run to stop or to checkpoint; set by the trainer."""
        if self._control is None:
            raise RuntimeError(
                f"callback {type(self).__name__} has no control yet: the trainer attaches it "
                "before on_train_start"
            )
        return self._control

    @control.setter
    def control(self, control: TrainerControl) -> None:
        self._control = control

    def on_train_start(self, state: TrainStart) -> None:
        """Before the first step (also after a resume): ``state.iteration``, ``state.best``, …"""

    def on_log(self, record: MetricsRecord) -> None:
        """Every ``train.log_every`` iterations: ``record.iteration``, ``record.meta_loss``, …

        A validation's record also has ``record.val`` (JSON: ``val_<metric>``).
        """

    def on_train_end(self, summary: TrainSummary) -> None:
        """After the last step, the time limit or a stop request, once the checkpoint is written."""
