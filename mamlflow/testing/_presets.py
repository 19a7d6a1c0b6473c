"""``check_preset``: a preset resolves, trains a few steps and evaluates."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from pathlib import Path

from mamlflow.core import (
    ConfigError,
    MamlflowError,
)
from mamlflow.engine import (
    PluginHost,
    Trainer,
    build_components,
    evaluate,
    load_checkpoint,
    resolve,
)

from ._common import _call, _fail, _one_line

# -- presets ---------------------------------------------------------------------------------


def check_preset(
    host: PluginHost,
    name: str,
    *,
    iterations: int = 10,
    tasks: int = 20,
    sets: Sequence[str] = (),
) -> None:
    """Check that preset ``name`` resolves, builds, trains ``iterations`` steps and evaluates.

    The components it names must be registered on ``host`` (the ``mamlflow_host`` fixture gives
    one with the built-ins and the plugin under test). ``sets`` are extra ``--set`` items
    applied after the check's own, e.g. ``("train.meta_batch_size=2",)`` to check an expensive
    preset small. Training runs in a temporary directory with validation off; the final
    checkpoint is evaluated on ``tasks`` held-out tasks, and the metric must be finite. Whether
    it learns is for the plugin's own tests.
    """
    who = f"preset '{name}'"
    own = (f"train.iterations={iterations}", "train.val_every=null", "train.time_limit=null")
    try:
        host.preset(name)
        config = resolve(host, preset=name, sets=(*own, *sets)).config
    except ConfigError as exc:
        issues = "; ".join(_one_line(issue) for issue in exc.issues)
        _fail(who, f"does not resolve: {issues}", "fix the preset's values or the sets given")
    except MamlflowError as exc:
        _fail(who, f"does not resolve: {_one_line(str(exc))}", "register what it names")
    with tempfile.TemporaryDirectory(prefix="mamlflow-check-") as run_dir:
        trainer = _call(
            who,
            "building its components",
            lambda: Trainer(config, Path(run_dir), host),
            "run check_task_family and check_model on the components it names",
        )
        summary = _call(who, f"training {iterations} iterations", trainer.fit, "see the error")
        if summary.meta_loss is None or not math.isfinite(summary.meta_loss):
            _fail(who, f"trains to a meta-loss of {summary.meta_loss}", "lower inner.lr/outer.lr")
        checkpoint = load_checkpoint(Path(run_dir))
    components = build_components(config, host)
    shots = config.eval.shots[0] if config.eval.shots else config.task.shots
    result, _ = _call(
        who,
        f"evaluating {tasks} tasks",
        lambda: evaluate(
            components,
            checkpoint.params,
            checkpoint.learnables,
            shots=shots,
            steps=config.inner.steps,
            tasks=tasks,
            query=config.eval.query,
        ),
        "see the error",
    )
    if not all(math.isfinite(v) for v in result.mean):
        _fail(who, f"evaluates to {result.metric} {result.mean}", "lower inner.lr/outer.lr")
