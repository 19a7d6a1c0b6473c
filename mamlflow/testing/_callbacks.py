"""``check_callback``: a callback survives a real short run and a resume of it."""

from __future__ import annotations

import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, NoReturn

from mamlflow.core import (
    Callback,
    CallbackConfig,
    ConfigError,
    MamlflowError,
    MetricsRecord,
    PluginError,
    TrainStart,
    TrainSummary,
)
from mamlflow.engine import (
    ResolvedConfig,
    Trainer,
    resolve,
)

from ._common import (
    _answer,
    _call,
    _component_class,
    _default_config,
    _fail,
    _one_line,
    _one_thread,
    _raise,
    _reference_host,
)

# -- callbacks -----------------------------------------------------------------------------------

# What the trainer hands each callback method.
_RECEIVES = {
    "on_train_start": "TrainStart",
    "on_log": "MetricsRecord",
    "on_train_end": "TrainSummary",
}


def check_callback(
    callback: Callback | type[Callback],
    *,
    iterations: int = 4,
    seed: int = 0,
    sets: Sequence[str] = (),
) -> None:
    """Check that a callback builds, answers ``check_config`` and survives a run and its resume.

    A class is built with its ``Config``'s defaults; an instance is rebuilt with its ``config``
    (the trainer builds callbacks with the run's directory). Checked: ``name`` and a frozen
    ``Config`` subclassing ``CallbackConfig``; ``check_config`` answers None or one line for the
    sinusoid preset's run config, and accepts the check's run; then, in a temporary
    directory, a real sinusoid run of ``iterations`` iterations (a metrics record every
    iteration, a validation every ``iterations // 2``; ``sets`` are ``--set`` items applied
    after those) stopped half-way, and its resume, each with a callback newly built with
    ``(run_dir, config)``: none of its methods raises on the ``TrainStart``, ``MetricsRecord``
    (with and without a validation) and ``TrainSummary`` objects the trainer hands it, and the
    resumed run starts it at ``iteration > 0`` in a directory that holds the first run's files.
    """
    cls, who = _component_class(callback, Callback, CallbackConfig, "callback")
    if iterations < 2:
        raise ValueError(f"iterations must be at least 2 to resume half-way, got {iterations}")
    config = (
        callback.config
        if isinstance(callback, Callback)
        else _default_config(who, cls, {}, f"{cls.__name__}(run_dir, {cls.Config.__name__}(...))")
    )
    resolved = _callback_run(who, cls, iterations=iterations, seed=seed, sets=sets)
    with tempfile.TemporaryDirectory(prefix="mamlflow-check-") as tmp:
        run_dir = Path(tmp) / "run"
        first = _run_with(who, cls, config, resolved, run_dir, stop_at=iterations // 2)
        again = _run_with(who, cls, config, resolved, run_dir, stop_at=None)
    _check_deliveries(who, first, again)


def _callback_run(
    who: str, cls: type[Callback], *, iterations: int, seed: int, sets: Sequence[str]
) -> ResolvedConfig:
    """The check's sinusoid run, after ``check_config`` has answered for the preset's own."""
    host = _reference_host()
    preset = resolve(host, preset="sinusoid").config
    _answer(who, "check_config(the sinusoid preset's run config)", lambda: cls.check_config(preset))
    own = (
        f"seed={seed}",
        f"train.iterations={iterations}",
        "train.meta_batch_size=4",
        "train.log_every=1",
        f"train.val_every={iterations // 2}",
        "train.val_tasks=4",
        "train.time_limit=null",
        "train.callbacks=[]",
        "eval.steps=1",
        "kernel.strategy=batched",
    )
    try:
        resolved = resolve(host, preset="sinusoid", sets=(*own, *sets))
    except ConfigError as exc:
        issues = "; ".join(_one_line(issue) for issue in exc.issues)
        _fail(who, f"the check's run does not resolve with sets {list(sets)}: {issues}", "fix sets")
    except MamlflowError as exc:
        _fail(who, f"the check's run does not resolve: {_one_line(str(exc))}", "fix sets")
    problem = _answer(
        who, "check_config(the check's run config)", lambda: cls.check_config(resolved.config)
    )
    if problem is not None:
        _fail(
            who,
            f"check_config refuses the check's sinusoid run ({problem})",
            "pass check_callback(..., sets=[...]) items that give it a run it accepts",
        )
    return resolved


class _Recorder(Callback):
    """Notes what the trainer hands the callbacks; stops the run at ``stop_at`` if given."""

    name: ClassVar[str] = "mamlflow-testing-recorder"

    def __init__(self, run_dir: Path, stop_at: int | None) -> None:
        super().__init__(run_dir)
        self.stop_at = stop_at
        self.received: list[str] = []
        self.start: TrainStart | None = None
        self.end: TrainSummary | None = None
        self.validated = False

    def on_train_start(self, state: TrainStart) -> None:
        self.received.append(type(state).__name__)
        self.start = state

    def on_log(self, record: MetricsRecord) -> None:
        self.received.append(type(record).__name__)
        self.validated |= record.val is not None
        if self.stop_at is not None and record.iteration >= self.stop_at:
            self.control.request_stop("interrupted by mamlflow.testing")

    def on_train_end(self, summary: TrainSummary) -> None:
        self.received.append(type(summary).__name__)
        self.end = summary


def _run_with(
    who: str,
    cls: type[Callback],
    config: CallbackConfig,
    resolved: ResolvedConfig,
    run_dir: Path,
    *,
    stop_at: int | None,
) -> _Recorder:
    """A sinusoid run with a new ``cls(run_dir, config)``: to ``stop_at``, or resumed."""
    resume = stop_at is None
    phase = "the resume of a short sinusoid run" if resume else "a short sinusoid run"
    instance = _call(
        who,
        f"{cls.__name__}(run_dir, config) for {phase}",
        lambda: cls(run_dir, config),
        "build from the two arguments the trainer passes, (run_dir, config); a missing optional "
        "package is a ConfigError that names how to install it",
    )
    recorder = _Recorder(run_dir, stop_at)
    trainer = _call(
        who,
        f"building the trainer of {phase}",
        lambda: Trainer(
            resolved, run_dir, _reference_host(), resume=resume, callbacks=[instance, recorder]
        ),
        "see the error",
    )
    with _one_thread():
        try:
            trainer.fit()
        except Exception as exc:
            _raised_during_training(who, exc, instance, phase)
    return recorder


def _raised_during_training(who: str, exc: Exception, instance: Callback, phase: str) -> NoReturn:
    """The check's failure for ``exc``, naming the callback method it came from."""
    if isinstance(exc, PluginError) and isinstance(exc.__cause__, Exception):
        exc = exc.__cause__  # the trainer names the plugin; the check names the method too
    method = next(
        (
            frame.f_code.co_name
            for frame, _ in traceback.walk_tb(exc.__traceback__)
            if frame.f_code.co_name in _RECEIVES and frame.f_locals.get("self") is instance
        ),
        None,
    )
    if method is None:
        _raise(who, f"training during {phase}", exc, "see the error")
    _raise(
        who,
        f"{method}({_RECEIVES[method]}) during {phase}",
        exc,
        "callbacks receive frozen TrainStart, MetricsRecord and TrainSummary objects: read "
        "their attributes (state.iteration, record.val, summary.stopped_by), never assign to "
        "them, keep your own state on self, and expect a resumed run to start at "
        "state.iteration > 0 in a run directory that holds the first run's files",
    )


def _check_deliveries(who: str, first: _Recorder, again: _Recorder) -> None:
    """Each run handed its callbacks a TrainStart, MetricsRecords and a TrainSummary, the
    resume started where the first run stopped, and a record held a validation."""
    for recorder, label in ((first, "the run"), (again, "its resume")):
        got = recorder.received
        if (
            got[:1] != ["TrainStart"]
            or got[-1:] != ["TrainSummary"]
            or (set(got[1:-1]) - {"MetricsRecord"})
        ):
            _fail(
                who,
                f"in {label} the callbacks received {got}",
                "report a mamlflow bug: a run hands callbacks a TrainStart, MetricsRecords and "
                "a TrainSummary",
            )
    stopped = first.end.iteration if first.end is not None else -1
    resumed = again.start.iteration if again.start is not None else -1
    if not 0 < stopped == resumed:
        _fail(
            who,
            f"the check's run stopped at iteration {stopped} and its resume started at {resumed}",
            "a callback that stops runs (control.request_stop) must let the check's run reach "
            "iteration 1; otherwise report a mamlflow bug",
        )
    if not (first.validated or again.validated):
        _fail(
            who,
            "no metrics record of the check's runs held a validation",
            "keep train.val_every within train.iterations in sets",
        )
