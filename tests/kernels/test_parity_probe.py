"""A kernel that computes a wrong meta-gradient cannot be selected, by ``auto`` or by name.

The case is issue 14's: the sinusoid MLP with torch's ``nn.LayerNorm`` after each hidden layer.
Under ``vmap`` torch differentiates it wrongly a second time (functorch #534), by 5.5e-4 of the
largest meta-gradient entry on the sinusoid preset's shapes, which float32's tolerance (1e-3) let
through. Parity is now checked in float64, where correct kernels agree to 1e-15.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar, Literal

import pytest
import torch
from torch import Tensor, nn
from torch._dynamo.utils import counters
from torch.nn import functional as F

import mamlflow.nn as safe
from mamlflow.core import (
    STRATEGIES,
    ConfigError,
    Learner,
    MetaStep,
    ModelConfig,
    ModelIO,
    ModelPlugin,
    Params,
    TaskBatch,
    TaskObjective,
    hookimpl,
    sgd,
)
from mamlflow.engine import PluginHost, Trainer, resolve
from mamlflow.kernels import (
    AUTO_COMPILE_MIN_SECONDS,
    Selection,
    _select,
    clear_selection_cache,
    make_meta_step,
    select_meta_step,
)
from mamlflow.plugins.mlp import MLPConfig
from mamlflow.plugins.sinusoid import Sinusoid, SinusoidConfig

INNER_LR = 0.01  # the sinusoid preset's
TASKS = 25
FAST = [s for s in STRATEGIES if s != "loop"]
LONG = int(10 * AUTO_COMPILE_MIN_SECONDS)  # a run long enough that every compile would pay


def _mlp(norm: Callable[[int], nn.Module]) -> nn.Sequential:
    torch.manual_seed(1)
    layers: list[nn.Module] = []
    width = 1
    for hidden in (40, 40):
        layers += [nn.Linear(width, hidden), norm(hidden), nn.ReLU()]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, 1))


class _FunctionalLayerNorm(nn.Module):
    """``F.layer_norm`` with a weight inside a module of the model's own: no scan finds it."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(features))

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.gain.shape, self.gain)


NORMS: dict[str, Callable[[int], nn.Module]] = {
    "torch": nn.LayerNorm,
    "mamlflow": safe.LayerNorm,
    "functional": _FunctionalLayerNorm,
    "running-stats": nn.BatchNorm1d,
}


@functools.cache
def _problem(
    norm: str, dtype: torch.dtype = torch.float32
) -> tuple[nn.Module, TaskObjective, Params, TaskBatch]:
    family = Sinusoid(SinusoidConfig(name="sinusoid"))
    learner = Learner(_mlp(NORMS[norm])).to("cpu", dtype)
    batch = family.sample(0, 0, torch.arange(TASKS)).to("cpu", dtype)
    return learner.module, family.objective(learner), learner.init_params(), batch


@pytest.fixture(autouse=True)
def _fresh_selection_cache() -> Iterator[None]:
    clear_selection_cache()
    yield
    clear_selection_cache()


def _select_for(
    requested: str,
    norm: str = "torch",
    dtype: torch.dtype = torch.float32,
    *,
    remaining: int = 10,
    objective: TaskObjective | None = None,
    factory: Callable[..., MetaStep] | None = None,
    **options: object,
) -> Selection:
    module, own_objective, params, batch = _problem(norm, dtype)
    return select_meta_step(
        requested,
        objective or own_objective,
        sgd(INNER_LR),
        steps=1,
        first_order=False,
        remaining_iterations=remaining,
        probe=(params, {}, batch.support, batch.query),
        module=module,
        factory=factory,
        **options,  # type: ignore[arg-type]
    )


def _favour_batched(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Timings that make batched (and its compiled twin) win: the wrong kernel is the fastest.

    Real timings are machine noise; here the point is what wins when the wrong kernel is faster.
    Returns the strategies timed, in order.
    """
    timed: list[str] = []
    seconds = {"loop": 6.0, "batched": 1.0, "compiled": 0.2, "cudagraphs": 0.1}

    def fake(strategy: str, step: object, probe: object, scale: object) -> float:
        timed.append(strategy)
        return seconds.get(strategy, 3.0)

    monkeypatch.setattr(_select, "_seconds_per_step", fake)
    return timed


def _grads(strategy: str, norm: str, dtype: torch.dtype) -> dict[str, Tensor]:
    _, objective, params, batch = _problem(norm, dtype)
    step = make_meta_step(objective, sgd(INNER_LR), steps=1, first_order=False, strategy=strategy)
    return step(params, {}, batch.support, batch.query, 1 / TASKS).grads


def test_the_wrong_kernel_passes_a_float32_check_but_not_a_float64_one() -> None:
    # Why the probe moved to float64: in float32 the bug hides inside the rounding tolerance.
    wrong32, loop32 = (
        _grads("batched", "torch", torch.float32),
        _grads("loop", "torch", torch.float32),
    )
    assert _select._close(wrong32, loop32)  # what auto checked before, and accepted
    wrong, loop = _grads("batched", "torch", torch.float64), _grads("loop", "torch", torch.float64)
    scale = max(v.abs().max().item() for v in loop.values())
    error = max((wrong[k] - loop[k]).abs().max().item() for k in loop) / scale
    assert 1e-4 < error < 1e-3  # 5.5e-4: really wrong, yet inside float32's 1e-3
    assert error > 1e5 * _select.PARITY_TOLERANCE


@pytest.mark.parametrize("remaining", [10, LONG], ids=["short-run", "long-run"])
def test_auto_in_float32_keeps_the_loop_even_when_batched_is_faster(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, remaining: int
) -> None:
    timed = _favour_batched(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="mamlflow.kernels"):
        selection = _select_for("auto", remaining=remaining)
    assert selection.strategy == "loop"
    assert timed == ["loop"]  # neither the wrong kernel nor its compiled twins ran for time
    assert "batched meta-gradient disagrees with the loop by 5.5e-04" in selection.reason
    assert "in float64" in selection.reason
    assert "1 (LayerNorm: use mamlflow.nn.LayerNorm)" in selection.reason
    assert "mamlflow.nn.LayerNorm" in caplog.text  # the log says why
    if remaining == LONG:  # the loop's compiled twins vmap the same graph: not even compiled
        assert "compiled-split not tried (batched meta-gradient disagrees" in selection.reason
    _assert_matches_loop(selection, "torch")


def _assert_matches_loop(selection: Selection, norm: str) -> None:
    _, _, params, batch = _problem(norm, torch.float32)
    result = selection.step(params, {}, batch.support, batch.query, 1 / TASKS)
    for k, want in _grads("loop", norm, torch.float32).items():
        torch.testing.assert_close(result.grads[k], want, rtol=0, atol=1e-6)


def test_auto_uses_batched_on_the_same_model_built_from_mamlflow_nn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _favour_batched(monkeypatch)
    selection = _select_for("auto", "mamlflow")
    assert selection.strategy == "batched"
    _assert_matches_loop(selection, "mamlflow")


@pytest.mark.parametrize("strategy", FAST)
def test_an_explicit_fast_strategy_is_refused_with_one_line(strategy: str) -> None:
    with pytest.raises(ConfigError) as refused:
        _select_for(strategy)
    (line,) = refused.value.issues
    assert "\n" not in line
    assert line.startswith(f"kernel.strategy: {strategy}")
    assert "disagrees with the loop by 5.5e-04 of its largest entry in float64" in line
    assert "1 (LayerNorm: use mamlflow.nn.LayerNorm), 4 (LayerNorm: use" in line
    assert line.endswith("or use kernel.strategy=loop")


@pytest.mark.parametrize("strategy", ["loop", "batched", "compiled"])
def test_explicit_strategies_build_for_a_model_that_is_right(strategy: str) -> None:
    selection = _select_for(strategy, "mamlflow")
    assert (selection.strategy, selection.reason) == (strategy, "requested")
    if strategy != "compiled":  # building is lazy; compiling costs tens of seconds
        _assert_matches_loop(selection, "mamlflow")


def test_explicit_loop_is_not_checked() -> None:
    calls = _Counting()
    assert _select_for("loop", factory=calls).strategy == "loop"
    assert calls.runs == []


class _Counting:
    """``make_meta_step``, counting every run of a step it built, by strategy and dtype."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, torch.dtype]] = []

    def __call__(self, *args: object, strategy: str, **kwargs: object) -> MetaStep:
        step = make_meta_step(*args, strategy=strategy, **kwargs)  # type: ignore[arg-type]

        def run(params: Params, *rest: object) -> object:
            self.runs.append((strategy, next(iter(params.values())).dtype))
            return step(params, *rest)  # type: ignore[arg-type]

        return run  # type: ignore[return-value]


def test_the_explicit_check_runs_once_per_signature_in_float64() -> None:
    calls = _Counting()
    for _ in range(2):
        _select_for("batched", "mamlflow", factory=calls, signature="mlp-layernorm")
    assert calls.runs == [("loop", torch.float64), ("batched", torch.float64)]
    with pytest.raises(ConfigError):  # the verdict is the signature's, refusals included
        _select_for("batched", "torch", signature="mlp-torch-layernorm")
    calls.runs.clear()
    with pytest.raises(ConfigError):
        _select_for("compiled", "torch", factory=calls, signature="mlp-torch-layernorm")
    assert calls.runs == []


def test_auto_after_an_explicit_check_still_measures() -> None:
    _select_for("batched", "mamlflow", signature="shared")
    selection = _select_for("auto", "mamlflow", signature="shared")
    assert set(selection.timings) == {"loop", "batched"}
    assert not selection.reason.startswith("cached")


def test_the_check_is_skipped_where_told_or_where_there_are_no_tasks() -> None:
    module, objective, params, batch = _problem("torch")
    options = {"steps": 1, "first_order": False, "remaining_iterations": 10, "module": module}
    # another process checked it (the trainer's rank 0)
    probe = (params, {}, batch.support, batch.query)
    told = select_meta_step(
        "batched", objective, sgd(INNER_LR), probe=probe, verify=False, **options
    )
    assert told.strategy == "batched"
    # a process without tasks has nothing to check with
    empty = select_meta_step(
        "batched", objective, sgd(INNER_LR), probe=(params, {}, {}, {}), **options
    )
    assert empty.strategy == "batched"


def _float32_only(norm: str) -> TaskObjective:
    """The sinusoid loss through a float32 constant: a model that cannot run in float64."""
    _, objective, _, _ = _problem(norm)
    mix = torch.eye(1, dtype=torch.float32)

    def loss(params: Params, data: dict[str, Tensor]) -> Tensor:
        return objective(params, {"x": torch.mm(data["x"], mix), "y": data["y"]})

    return loss


def test_without_float64_the_check_runs_in_float32_at_a_tight_tolerance(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _favour_batched(monkeypatch)
    wrong = _select_for("auto", objective=_float32_only("torch"))
    assert wrong.strategy == "loop"
    assert "disagrees with the loop by 5.5e-04 of its largest entry in float32" in wrong.reason
    right = _select_for("auto", "mamlflow", objective=_float32_only("mamlflow"))
    assert right.strategy == "batched"
    with pytest.raises(ConfigError, match="in float32"):
        _select_for("batched", objective=_float32_only("torch"))


def test_a_multi_step_loss_is_checked_in_float64_too(monkeypatch: pytest.MonkeyPatch) -> None:
    _favour_batched(monkeypatch)
    module, objective, params, batch = _problem("torch")
    selection = select_meta_step(
        "auto",
        objective,
        sgd(INNER_LR),
        steps=2,
        first_order=False,
        remaining_iterations=10,
        probe=(params, {}, batch.support, batch.query),
        multi_step=True,
        module=module,
    )
    assert selection.strategy == "loop"
    assert "in float64" in selection.reason


def test_a_model_without_known_unsafe_layers_is_refused_all_the_same() -> None:
    # A functional F.layer_norm is no layer the scan can find: the check still catches it.
    assert safe.vmap_unsafe_layers(_problem("functional")[0]) == []
    with pytest.raises(ConfigError, match="no layer known to be unsafe") as refused:
        _select_for("batched", "functional")
    assert str(refused.value).endswith("; use kernel.strategy=loop")


def test_a_kernel_that_fails_is_refused_with_the_layer_to_replace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # torch's batch norm with running statistics: vmap refuses their in-place update.
    with pytest.raises(ConfigError) as refused:
        _select_for("batched", "running-stats")
    (line,) = refused.value.issues
    assert line.startswith("kernel.strategy: batched failed (RuntimeError: ")
    assert "1 (BatchNorm1d: use mamlflow.nn.BatchNorm)" in line
    _favour_batched(monkeypatch)
    selection = _select_for("auto", "running-stats")
    assert selection.strategy == "loop" and "batched failed (RuntimeError" in selection.reason


# -- through the trainer ---------------------------------------------------------------------


class _NormConfig(MLPConfig):
    norm: Literal["torch", "mamlflow"] = "torch"


class _NormMLP(ModelPlugin):
    """The sinusoid MLP with a layer norm after each hidden layer."""

    name: ClassVar[str] = "mlp-layernorm"
    Config: ClassVar[type[ModelConfig]] = _NormConfig
    config: _NormConfig

    def build(self, io: ModelIO) -> nn.Module:
        return _mlp(NORMS[self.config.norm])


class _Plugin:
    @hookimpl
    def register_models(self, register: Callable[[type[ModelPlugin]], None]) -> None:
        register(_NormMLP)


@pytest.fixture(scope="module")
def norm_host() -> Iterator[PluginHost]:
    host = PluginHost(autoload=False)
    undo = host.add_plugin(_Plugin(), "mlp-layernorm")
    yield host
    undo()


def _trainer(host: PluginHost, run_dir: Path, *sets: str) -> Trainer:
    base = ("model.name=mlp-layernorm", "train.iterations=2", "train.meta_batch_size=5")
    return Trainer(resolve(host, preset="sinusoid", sets=(*base, *sets)).config, run_dir, host)


def test_a_float32_auto_run_trains_with_the_loop(norm_host: PluginHost, tmp_path: Path) -> None:
    trainer = _trainer(norm_host, tmp_path / "run")
    trainer.fit()
    assert trainer.selection is not None and trainer.selection.strategy == "loop"
    assert "1 (LayerNorm: use mamlflow.nn.LayerNorm)" in trainer.selection.reason


def test_a_run_with_explicit_batched_is_refused(norm_host: PluginHost, tmp_path: Path) -> None:
    trainer = _trainer(norm_host, tmp_path / "run", "kernel.strategy=batched")
    with pytest.raises(ConfigError) as refused:
        trainer.fit()
    (line,) = refused.value.issues
    assert line.startswith("kernel.strategy: batched meta-gradient disagrees with the loop")
    assert "mamlflow.nn.LayerNorm" in line


def test_a_run_with_the_safe_layers_keeps_batched(norm_host: PluginHost, tmp_path: Path) -> None:
    trainer = _trainer(
        norm_host, tmp_path / "run", "kernel.strategy=batched", "model.norm=mamlflow"
    )
    trainer.fit()
    assert trainer.selection is not None and trainer.selection.strategy == "batched"


@pytest.mark.slow
def test_a_compiled_candidate_is_compiled_once_and_checked_in_float32(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Its eager twin vouches for it in float64; the compiled kernel itself runs only in the run's
    # dtype (a float64 check of it would cost a second compile: ~25 s for this MLP here).
    timed = _favour_batched(monkeypatch)
    calls = _Counting()
    torch._dynamo.reset()
    before = counters["stats"]["unique_graphs"]
    selection = _select_for("auto", "mamlflow", remaining=LONG, factory=calls)
    assert selection.strategy == "compiled"
    assert "compiled matches the loop on the probe" in selection.reason
    assert timed == ["loop", "batched", "compiled"]
    assert ("compiled", torch.float64) not in calls.runs
    assert ("compiled", torch.float32) in calls.runs
    assert counters["stats"]["unique_graphs"] - before == 1  # one compile, in float32
    _assert_matches_loop(selection, "mamlflow")
    torch._dynamo.reset()


def _error(strategy: str) -> float:
    wrong, loop = _grads(strategy, "torch", torch.float64), _grads("loop", "torch", torch.float64)
    scale = max(v.abs().max().item() for v in loop.values())
    return max((wrong[k] - loop[k]).abs().max().item() for k in loop) / scale


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["compiled", "compiled-split"])
def test_compiled_twins_inherit_the_eager_twins_error(strategy: str) -> None:
    # Why the eager batched kernel may vouch for them: compiling lowers the same vmapped graph,
    # wrong second derivative included (so a float64 check of the eager twin is enough).
    torch._dynamo.reset()
    before = counters["stats"]["unique_graphs"]
    assert _error(strategy) == pytest.approx(_error("batched"), rel=1e-6)
    assert counters["stats"]["unique_graphs"] > before  # it compiled: no silent eager fallback
    torch._dynamo.reset()
