"""mamlflow.testing: its checks fail, with the right one-line message, on components broken in the
ways plugin authors break them (that every built-in passes them is ``tests/conformance``)."""

from __future__ import annotations

import inspect
import math
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from pydantic import ConfigDict
from torch import Tensor, nn
from torch.nn import functional as F

import mamlflow.testing
from mamlflow.core import (
    Adapter,
    AdapterState,
    Algorithm,
    Callback,
    CallbackConfig,
    ImageInputs,
    InnerConfig,
    MetricsRecord,
    ModelIO,
    ModelPlugin,
    Params,
    Policy,
    RunConfig,
    TaskBatch,
    TaskFamily,
    TaskObjective,
    TrainStart,
)
from mamlflow.engine import PluginHost
from mamlflow.plugins.navigation import Navigation, NavigationConfig
from mamlflow.plugins.optimizers import Adam
from mamlflow.plugins.sinusoid import Sinusoid, SinusoidConfig
from mamlflow.plugins.trpo import PPO
from mamlflow.testing import (
    check_algorithm,
    check_callback,
    check_model,
    check_optimizer,
    check_preset,
    check_task_family,
)

pytest_plugins = ["pytester"]


@pytest.fixture(scope="module")
def host() -> PluginHost:
    return PluginHost(autoload=False)


# -- broken task families ------------------------------------------------------------------------


class _Family(Sinusoid):
    """Sinusoid with one thing broken by each subclass."""

    name: ClassVar[str] = "broken"


def _raises(check: Callable[..., None], *args: Any, **kwargs: Any) -> str:
    with pytest.raises(AssertionError) as info:
        check(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_a_sampler_with_a_stateful_generator_is_not_deterministic() -> None:
    class Stateful(_Family):
        generator = torch.Generator().manual_seed(0)

        def sample(self, seed: int, iteration: int, task_indices: Tensor, **kw: Any) -> TaskBatch:
            batch = super().sample(seed, iteration, task_indices, **kw)
            noise = torch.rand(batch.support["y"].shape, generator=self.generator)
            return TaskBatch({**batch.support, "y": batch.support["y"] + noise}, batch.query,
                             batch.task_index, batch.info)  # fmt: skip

    message = _raises(check_task_family, Stateful)
    assert message.startswith(
        "task family 'broken': sample() is not deterministic: two calls with the same arguments "
        "differ (in support['y']); make every random number a function of (seed, split, "
        "iteration, task index)"
    ), message


def test_a_sampler_drawing_from_torch_global_rng_is_named() -> None:
    class Global(_Family):
        def sample(self, seed: int, iteration: int, task_indices: Tensor, **kw: Any) -> TaskBatch:
            batch = super().sample(seed, iteration, task_indices, **kw)
            torch.rand(1)
            return batch

    message = _raises(check_task_family, Global)
    assert "sample() changed torch's global RNG state; draw from mamlflow.rng" in message


def test_a_sampler_keyed_by_position_depends_on_the_split_of_the_batch() -> None:
    class ByPosition(_Family):
        def sample(self, seed: int, iteration: int, task_indices: Tensor, **kw: Any) -> TaskBatch:
            batch = super().sample(seed, iteration, task_indices, **kw)
            split = {"train": 0, "val": 1, "test": 2}[kw.get("split", "train")]
            generator = torch.Generator().manual_seed(seed * 10_000 + iteration * 10 + split)
            shift = torch.rand(len(task_indices), 1, 1, generator=generator)
            return TaskBatch({**batch.support, "y": batch.support["y"] + shift}, batch.query,
                             batch.task_index, batch.info)  # fmt: skip

    message = _raises(check_task_family, ByPosition)
    assert "sampling tasks [0..7] differs from sampling [0..2] and [3..7] and concatenating" in (
        message
    )
    assert "key each task's random numbers by its global index" in message


def test_a_sampler_that_ignores_the_split_is_caught() -> None:
    class OneSplit(_Family):
        def sample(self, seed: int, iteration: int, task_indices: Tensor, **kw: Any) -> TaskBatch:
            kw.pop("split", None)
            return super().sample(seed, iteration, task_indices, **kw)

    message = _raises(check_task_family, OneSplit)
    assert message.startswith(
        "task family 'broken': splits 'train' and 'val' sample the same tasks; give each split"
    ), message


def test_targets_of_the_wrong_shape_are_caught() -> None:
    class FlatTargets(_Family):
        def sample(self, seed: int, iteration: int, task_indices: Tensor, **kw: Any) -> TaskBatch:
            b = super().sample(seed, iteration, task_indices, **kw)
            flat = {"x": b.support["x"], "y": b.support["y"][..., 0]}
            return TaskBatch(flat, b.query, b.task_index, b.info)

    message = _raises(check_task_family, FlatTargets)
    assert message.startswith(
        "task family 'broken': support['y'] has shape (8, 10), expected (8, 10, 1); the model "
        "returns (examples, io.output_dim) per task"
    ), message


def test_a_sampler_that_ignores_shots_is_caught() -> None:
    class FixedShots(_Family):
        def sample(self, seed: int, iteration: int, task_indices: Tensor, **kw: Any) -> TaskBatch:
            return super().sample(seed, iteration, task_indices, split=kw.get("split", "train"))

    message = _raises(check_task_family, FixedShots)
    assert "sample(shots=2, query=3) returned 10 support and 10 query examples per task" in message


def test_a_prepare_that_differs_from_sample_is_caught() -> None:
    class Scaled(_Family):
        def prepare(self, batch: TaskBatch, dtype: torch.dtype) -> TaskBatch:
            support = {**batch.support, "x": batch.support["x"] * 2}
            return TaskBatch(support, batch.query, batch.task_index, batch.info)

    message = _raises(check_task_family, Scaled)
    assert message.startswith(
        "task family 'broken': prepare(sample_raw(...), torch.float32) differs from sample(...) "
        "in torch.float32 (in support['x'])"
    ), message


def test_image_inputs_of_another_shape_are_caught() -> None:
    class Images(_Family):
        def image_inputs(self, manifest: Any) -> ImageInputs:
            return ImageInputs(size=28, channels=1, mean=(0.0,), std=(1.0,))

    message = _raises(check_task_family, Images)
    assert "image_inputs reads images as (1, 28, 28), but io.input_shape is (1,)" in message


def test_an_objective_that_branches_on_tensor_values_is_caught() -> None:
    class Branching(_Family):
        def objective(self, model: Callable[..., Tensor]) -> TaskObjective:
            def loss(params: Params, data: Mapping[str, Tensor]) -> Tensor:
                error = (model(params, data["x"]) - data["y"]).pow(2).mean()
                return error if error < 100 else error.clamp(max=100)

            return loss

    message = _raises(check_task_family, Branching)
    assert message.startswith("task family 'broken': vmap(objective) raised RuntimeError"), message
    assert "no .item(), Python branching on tensor values" in message


def test_an_objective_that_is_not_a_scalar_is_caught() -> None:
    class PerExample(_Family):
        def objective(self, model: Callable[..., Tensor]) -> TaskObjective:
            return lambda params, data: (model(params, data["x"]) - data["y"]).pow(2)

    message = _raises(check_task_family, PerExample)
    assert "objective returned (10, 1), not a 0-d floating tensor" in message


def test_a_config_that_is_not_frozen_is_caught() -> None:
    class Mutable(SinusoidConfig):
        model_config = ConfigDict(frozen=False, extra="forbid")

    class Family(_Family):
        Config = Mutable

    message = _raises(check_task_family, Family)
    assert "Mutable is not frozen with extra='forbid'" in message


def test_a_config_without_defaults_asks_for_an_instance() -> None:
    class Needs(SinusoidConfig):
        period: float

    class Family(_Family):
        Config = Needs

    message = _raises(check_task_family, Family)
    assert "Needs() needs a value for period (Field required); pass an instance" in message


# -- broken rollout families ---------------------------------------------------------------------


def _navigation(cls: type[Navigation]) -> Navigation:
    """A few short trajectories per task: the collection path is what is checked."""
    return cls(NavigationConfig(name="navigation", shots=4, query=4, horizon=20))


class _Navigation(Navigation):
    """Navigation with one thing broken in ``simulate`` by each subclass."""

    name: ClassVar[str] = "broken-navigation"


def test_a_simulation_drawing_from_torch_global_rng_is_named() -> None:
    class Jitter(_Navigation):
        def simulate(
            self, info: dict[str, Tensor], act: Policy, trajectories: int, keys: Tensor
        ) -> dict[str, Tensor]:
            data = super().simulate(info, act, trajectories, keys)
            jitter = 0.01 * torch.randn(data["rewards"].shape, dtype=data["rewards"].dtype)
            return {**data, "rewards": data["rewards"] + jitter}

    message = _raises(check_task_family, _navigation(Jitter))
    assert message.startswith(
        "task family 'broken-navigation': collecting a meta-batch changed torch's global RNG "
        "state; draw anything random in simulate from generators seeded by the per-task keys"
    ), message


def test_a_simulation_keyed_by_the_first_task_depends_on_the_split_of_the_batch() -> None:
    class OneGenerator(_Navigation):
        def simulate(
            self, info: dict[str, Tensor], act: Policy, trajectories: int, keys: Tensor
        ) -> dict[str, Tensor]:
            data = super().simulate(info, act, trajectories, keys)
            generator = torch.Generator().manual_seed(int(keys[0]))  # one for the whole batch
            rewards = data["rewards"]
            noise = torch.rand(rewards.shape, generator=generator, dtype=rewards.dtype)
            return {**data, "rewards": rewards + 0.01 * noise}

    message = _raises(check_task_family, _navigation(OneGenerator))
    assert message.startswith(
        "task family 'broken-navigation': collecting tasks [0..7] differs from collecting "
        "[0..2] and [3..7] and concatenating (in support['rewards']); seed anything random in "
        "simulate from the key it receives for each task"
    ), message


def test_a_simulation_with_non_finite_rewards_is_caught() -> None:
    class Singular(_Navigation):
        def simulate(
            self, info: dict[str, Tensor], act: Policy, trajectories: int, keys: Tensor
        ) -> dict[str, Tensor]:
            data = super().simulate(info, act, trajectories, keys)
            rewards = data["rewards"].clone()
            rewards[..., 0] = -math.inf  # e.g. a log-distance reward at the goal
            return {**data, "rewards": rewards}

    message = _raises(check_task_family, _navigation(Singular))
    assert message.startswith(
        "task family 'broken-navigation': the meta-batch's support['rewards'] is not finite; "
        "return finite data"
    ), message


def test_a_policy_of_the_wrong_output_size_is_caught_on_a_rollout_family() -> None:
    # Two outputs for a 2-D action: a mean and no log-std, which broadcasting lets collect.
    message = _raises(
        check_model, _model(lambda io: nn.Linear(io.input_shape[0], 2)), _navigation(Navigation)
    )
    assert message.startswith(
        "model 'broken-model': forward on (4, 20, 2) inputs returned (4, 20, 2), expected "
        "(4, 20, 4)"
    ), message


# -- broken models -------------------------------------------------------------------------------


class _AffineBatchNorm(nn.Module):
    """F.batch_norm with affine weight/bias: wrong second-order meta-gradients under vmap."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(1, 16)
        self.weight = nn.Parameter(torch.ones(16))
        self.bias = nn.Parameter(torch.zeros(16))
        self.out = nn.Linear(16, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = F.batch_norm(self.hidden(x), None, None, self.weight, self.bias, training=True)
        return self.out(torch.relu(h))


class _Model(ModelPlugin):
    name: ClassVar[str] = "broken-model"
    builds: ClassVar[Callable[[ModelIO], nn.Module]]

    def build(self, io: ModelIO) -> nn.Module:
        return type(self).builds(io)


def _model(builds: Callable[[ModelIO], nn.Module]) -> type[ModelPlugin]:
    return type("Model", (_Model,), {"builds": staticmethod(builds)})


def test_a_model_whose_batched_kernel_disagrees_with_the_loop_is_caught() -> None:
    message = _raises(check_model, _model(lambda io: _AffineBatchNorm()), Sinusoid)
    assert message.startswith(
        "model 'broken-model': the batched kernel's meta-gradient (second order) differs from "
        "the loop reference by"
    ), message
    assert "mamlflow.nn.LayerNorm/BatchNorm/GroupNorm" in message and "functorch #534" in message


def test_a_model_with_the_wrong_output_size_is_caught() -> None:
    message = _raises(check_model, _model(lambda io: nn.Linear(1, 2)), Sinusoid)
    assert message == (
        "model 'broken-model': forward on (10, 1) inputs returned (10, 2), expected (10, 1); "
        "return (examples, io.output_dim) for inputs (examples, *io.input_shape)"
    )


def test_a_model_initialised_from_numpy_is_caught() -> None:
    def build(io: ModelIO) -> nn.Module:
        layer = nn.Linear(1, 1)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(np.random.default_rng().normal(size=(1, 1))))
        return layer

    message = _raises(check_model, _model(build), Sinusoid)
    assert "two builds under the same torch.manual_seed differ" in message


def test_a_model_that_is_not_vmap_safe_is_caught() -> None:
    class Clipped(nn.Linear):
        def forward(self, x: Tensor) -> Tensor:
            return super().forward(x).clamp(max=float(x.abs().max()))

    message = _raises(check_model, _model(lambda io: Clipped(1, 1)), Sinusoid)
    assert message.startswith(
        "model 'broken-model': the batched meta-step (second order, 2 inner steps) raised"
    ), message


def test_a_model_that_detaches_its_weights_is_caught() -> None:
    class Detached(nn.Linear):
        def forward(self, x: Tensor) -> Tensor:
            return F.linear(x, self.weight.detach(), self.bias.detach())

    message = _raises(check_model, _model(lambda io: Detached(1, 1)), Sinusoid)
    assert message == (
        "model 'broken-model': its output does not depend on the parameters it is called with; "
        "keep weights in nn.Parameter attributes (not plain tensors or closures) and do not "
        "detach them: the learner swaps them in with functional_call"
    )


# -- broken algorithms ---------------------------------------------------------------------------


class _Frozen(Adapter):
    """An inner loop that never moves: the outer loop can only learn the mean function."""

    def update(
        self, grads: Params, state: AdapterState, params: Params, learnables: Params, step: int
    ) -> tuple[Params, AdapterState]:
        return {k: torch.zeros_like(g) for k, g in grads.items()}, state


class _NoAdaptation(Algorithm):
    name: ClassVar[str] = "no-adaptation"

    def adapter(self, inner: InnerConfig) -> Adapter:
        return _Frozen()


def test_an_algorithm_that_does_not_adapt_does_not_learn() -> None:
    message = _raises(check_algorithm, _NoAdaptation)
    assert message.startswith(
        "algorithm 'no-adaptation': does not meta-learn sinusoid: after 500 iterations the MSE "
        "after 1 inner step(s) on 200 held-out tasks is"
    ), message
    assert "must be < 0.5x); check that the adapter's update descends the inner gradient" in (
        message
    )


def test_an_adapter_that_is_not_vmap_safe_is_caught() -> None:
    class Normalised(Adapter):
        def update(
            self, grads: Params, state: AdapterState, params: Params, learnables: Params, step: int
        ) -> tuple[Params, AdapterState]:
            return {k: -0.01 * g / float(g.detach().norm()) for k, g in grads.items()}, state

    class Algo(_NoAdaptation):
        name: ClassVar[str] = "normalised"

        def adapter(self, inner: InnerConfig) -> Adapter:
            return Normalised()

    message = _raises(check_algorithm, Algo)
    assert message.startswith(
        "algorithm 'normalised': the batched meta-step (second order) raised"
    ), message


# -- broken outer optimizers ---------------------------------------------------------------------


class _Optimizer(Adam):
    """Adam with one thing broken by each subclass."""

    name: ClassVar[str] = "broken-optimizer"


def test_an_optimizer_that_ignores_the_leaves_it_is_given_is_caught() -> None:
    class Elsewhere(_Optimizer):
        def build(self, params: Iterable[Tensor]) -> torch.optim.Optimizer:
            return torch.optim.Adam([torch.zeros(3, requires_grad=True)], lr=self.config.lr)

    message = _raises(check_optimizer, Elsewhere)
    assert message.startswith(
        "outer optimizer 'broken-optimizer': build(leaves) returned an optimizer over 1 tensors "
        "that are not the 4 leaves it was given; pass the params argument on"
    ), message


def test_an_optimizer_that_ignores_the_schedule_is_caught() -> None:
    class FixedRate(_Optimizer):
        def prepare_step(
            self, optimizer: torch.optim.Optimizer, params: Sequence[Tensor], iteration: int,
            total: int,
        ) -> None:  # fmt: skip
            torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], 10.0)

    message = _raises(check_optimizer, FixedRate)
    assert message == (
        "outer optimizer 'broken-optimizer': with schedule=linear, prepare_step(optimizer, "
        "leaves, 5, 10) leaves the learning rate at 0.001, but lr_at(5, 10) is 0.00055; call "
        "super().prepare_step(...) where you override it: it sets every param group's lr to "
        "lr_at(iteration, total), how schedules (and a resumed run's rate) reach the optimizer"
    )


def test_an_optimizer_that_ascends_is_caught() -> None:
    class Ascending(_Optimizer):
        def build(self, params: Iterable[Tensor]) -> torch.optim.Optimizer:
            return torch.optim.Adam(params, lr=self.config.lr, maximize=True)

    message = _raises(check_optimizer, Ascending)
    assert message.startswith(
        "outer optimizer 'broken-optimizer': does not lower the meta-loss of a fixed sinusoid "
        "meta-batch:"
    ), message
    assert "move the leaves down the meta-gradient the trainer puts in their .grad" in message


class _CountingSGD(torch.optim.SGD):
    """SGD whose steps shrink with a count it keeps outside its state_dict."""

    def __init__(self, params: Iterable[Tensor], lr: float) -> None:
        super().__init__(params, lr=lr)
        self.taken = 0

    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        self.taken += 1
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = p.grad / self.taken
        super().step()


def test_an_optimizer_with_state_outside_its_state_dict_does_not_resume_exactly() -> None:
    class Counting(_Optimizer):
        def build(self, params: Iterable[Tensor]) -> torch.optim.Optimizer:
            return _CountingSGD(params, lr=self.config.lr)

    message = _raises(check_optimizer, Counting)
    assert message.startswith(
        "outer optimizer 'broken-optimizer': continuing from a state_dict saved after 2 of 4 "
        "steps differs from not stopping (by"
    ), message
    assert "keep all of the optimizer's state in optimizer.state and param_groups" in message


def test_a_policy_optimizer_that_accepts_supervised_families_is_caught() -> None:
    class Everywhere(PPO):
        name: ClassVar[str] = "broken-ppo"

        def check_task_family(self, family: TaskFamily) -> str | None:
            return None

    message = _raises(check_optimizer, Everywhere)
    assert message.startswith(
        "outer optimizer 'broken-ppo': check_task_family accepts the supervised family "
        "'sinusoid', for which a policy step gets no PolicyTerms"
    ), message


# -- broken callbacks ----------------------------------------------------------------------------


class _Callback(Callback):
    name: ClassVar[str] = "broken-callback"


def test_a_callback_that_writes_into_its_records_is_caught() -> None:
    class DictRecords(_Callback):
        def on_log(self, record: MetricsRecord) -> None:
            record["seen"] = True  # type: ignore[index]  # records were plain dicts once

    message = _raises(check_callback, DictRecords)
    assert message.startswith(
        "callback 'broken-callback': on_log(MetricsRecord) during a short sinusoid run raised "
        "TypeError: 'MetricsRecord' object does not support item assignment; callbacks receive "
        "frozen TrainStart, MetricsRecord and TrainSummary objects"
    ), message


def test_a_callback_that_cannot_start_in_a_resumed_run_is_caught() -> None:
    class FreshDirectoryOnly(_Callback):
        def on_train_start(self, state: TrainStart) -> None:
            (self.run_dir / "notes.txt").open("x").close()  # refuses a file already there

    message = _raises(check_callback, FreshDirectoryOnly)
    assert message.startswith(
        "callback 'broken-callback': on_train_start(TrainStart) during the resume of a short "
        "sinusoid run raised FileExistsError"
    ), message
    assert "expect a resumed run to start at state.iteration > 0" in message


def test_a_callback_config_that_is_not_frozen_is_caught() -> None:
    class Mutable(CallbackConfig):
        model_config = ConfigDict(frozen=False, extra="forbid")

    class Unfrozen(_Callback):
        Config = Mutable

    message = _raises(check_callback, Unfrozen)
    assert message.startswith(
        "callback 'broken-callback': Mutable is not frozen with extra='forbid'; keep the "
        "model_config it inherits"
    ), message


def test_a_check_config_answer_of_several_lines_is_caught() -> None:
    class Verbose(_Callback):
        @classmethod
        def check_config(cls, run: RunConfig) -> str | None:
            return "no validation:\nset train.val_every"

    message = _raises(check_callback, Verbose)
    assert message == (
        "callback 'broken-callback': check_config(the sinusoid preset's run config) returned "
        "'no validation:\\nset train.val_every'; return None, or one line saying why it cannot "
        "work and what to do instead"
    )


# -- broken presets ------------------------------------------------------------------------------


def test_a_preset_naming_an_unknown_model_is_caught(host: PluginHost) -> None:
    from mamlflow.core import Preset, hookimpl

    class Plugin:
        @hookimpl
        def register_presets(self, register: Callable[[Preset], None]) -> None:
            register(Preset("typo", "", {"task": {"name": "sinusoid"}, "model": {"name": "mpl"}}))

    undo = host.add_plugin(Plugin(), "typo-preset")
    try:
        message = _raises(check_preset, host, "typo")
    finally:
        undo()
    assert message.startswith(
        "preset 'typo': does not resolve: model.name: Unknown model 'mpl'. Did you mean 'mlp'?"
    ), message


def test_a_preset_is_checked_with_the_sets_it_is_given(host: PluginHost) -> None:
    message = _raises(check_preset, host, "sinusoid", sets=("train.meta_batch_size=0",))
    assert message.startswith(
        "preset 'sinusoid': does not resolve: train.meta_batch_size: Input should be greater "
        "than or equal to 1 (from --set); fix the preset's values or the sets"
    ), message


# -- the fixtures, in a plugin's own test run ----------------------------------------------------

_PLUGIN = """
from mamlflow import hookimpl
from mamlflow.plugins.sinusoid import Sinusoid


class Wave(Sinusoid):
    name = "wave"


@hookimpl
def register_task_families(register):
    register({registered})
"""

_CONFTEST = """
import pytest

import wave_plugin

pytest_plugins = ["mamlflow.testing"]


@pytest.fixture
def mamlflow_plugin():
    return wave_plugin
"""

_TESTS = """
from mamlflow.testing import check_task_family


def test_registered(mamlflow_host):
    family = mamlflow_host.task_family("wave")
    check_task_family(family)
    assert mamlflow_host.task_family("sinusoid").name == "sinusoid"  # built-ins too
"""


def _plugin_project(pytester: pytest.Pytester, registered: str, conftest: str = _CONFTEST) -> None:
    pytester.makepyfile(wave_plugin=_PLUGIN.format(registered=registered))
    pytester.makeconftest(conftest)
    pytester.makepyfile(test_wave=_TESTS)
    pytester.syspathinsert()


def test_the_fixtures_give_a_host_with_the_plugin(pytester: pytest.Pytester) -> None:
    _plugin_project(pytester, "Wave")
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_the_host_fixture_fails_on_a_plugin_that_registers_something_invalid(
    pytester: pytest.Pytester,
) -> None:
    _plugin_project(pytester, "42")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*mamlflow: plugin 'wave_plugin' (added at runtime) registered int 42 as a task family*"]
    )


def test_the_plugin_fixture_says_how_to_name_the_plugin(pytester: pytest.Pytester) -> None:
    _plugin_project(pytester, "Wave", conftest='pytest_plugins = ["mamlflow.testing"]\n')
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*override the mamlflow_plugin fixture in your conftest.py*"])


# -- the module itself ---------------------------------------------------------------------------


def test_public_names_are_listed_typed_and_documented() -> None:
    assert set(mamlflow.testing.__all__) == {
        "check_algorithm",
        "check_callback",
        "check_model",
        "check_optimizer",
        "check_preset",
        "check_task_family",
        "mamlflow_host",
        "mamlflow_plugin",
    }
    for name in mamlflow.testing.__all__:
        obj = getattr(mamlflow.testing, name)
        assert (inspect.getdoc(obj) or "").strip(), name
    for name in (n for n in mamlflow.testing.__all__ if n.startswith("check_")):
        signature = inspect.signature(getattr(mamlflow.testing, name))
        assert signature.return_annotation != inspect.Signature.empty, name
        for parameter in signature.parameters.values():
            assert parameter.annotation != inspect.Parameter.empty, (name, parameter.name)


def _python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_importing_it_stays_light_and_import_mamlflow_does_not_import_it() -> None:
    out = _python(
        """
        import sys
        import mamlflow
        print("mamlflow.testing" in sys.modules)
        import mamlflow.testing
        print(sorted(m for m in ("typer", "rich", "numba", "matplotlib") if m in sys.modules))
        """
    )
    assert out.splitlines() == ["False", "[]"]


def test_the_checks_import_without_pytest() -> None:
    out = _python(
        """
        import sys
        sys.modules["pytest"] = None  # what an environment without pytest looks like
        import mamlflow.testing
        print(sorted(mamlflow.testing.__all__))
        """
    )
    assert out == str(
        [
            "check_algorithm",
            "check_callback",
            "check_model",
            "check_optimizer",
            "check_preset",
            "check_task_family",
        ]
    )
