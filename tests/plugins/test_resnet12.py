"""resnet12: its shapes, its vmap-safe norms, and parity under the meta-step kernels.

Parity runs a narrow ResNet-12 (channels 4, 8, 8, 8) on synthetic 5-way 1-shot episodes of three
tasks with 16×16 colour images (16 → 8 → 4 → 2 → 1), and compares the meta-gradients of the
batched (vmap) kernel with the per-task reference loop in float64, where correct kernels agree
to rounding (1e-15 of the largest entry) and the known vmap bugs are off by 1e-4 or more. The
loop itself is checked against finite differences of the meta-loss.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from typing import ClassVar

import pytest
import torch
from pydantic import Field, ValidationError
from torch import Tensor, nn
from torch.nn import functional as F

from mamlflow.core import (
    SPLITS,
    ConfigError,
    Learner,
    ModelIO,
    Split,
    StepResult,
    TaskBatch,
    TaskConfig,
    TaskFamily,
    TaskObjective,
    sgd,
)
from mamlflow.engine import PluginHost
from mamlflow.kernels import clear_selection_cache, make_meta_step, select_meta_step
from mamlflow.nn import BatchNorm, GroupNorm, vmap_unsafe_layers
from mamlflow.plugins.resnet12 import ResNet12, ResNet12Config
from mamlflow.rng import derive_key, normal
from mamlflow.testing import check_model

WAYS = 5
MINIIMAGENET = ModelIO((3, 84, 84), WAYS)
CIFAR = ModelIO((3, 32, 32), WAYS)  # CIFAR-FS and FC100
TINY_IO = ModelIO((3, 16, 16), WAYS)
TINY = (4, 8, 8, 8)
INNER_LR = 0.4
NUM_TASKS = 3
QUERY = 2  # query images per class
# Tolerances relative to the largest reference entry (at least 1): without a norm the untrained
# net's logits reach 1e4 and its meta-gradients 1e5.
F64_RTOL = 1e-10
F32_RTOL = 1e-4


def _build(io: ModelIO = TINY_IO, **options: object) -> nn.Module:
    return ResNet12(ResNet12Config(name="resnet12", **options)).build(io)  # type: ignore[arg-type]


def _count(in_channels: int, channels: tuple[int, ...], ways: int) -> int:
    """Parameters of ResNet-12 with norms: per block three 3×3 convs, a 1×1 shortcut, 4 norms."""
    total, width = 0, in_channels
    for c in channels:
        total += width * c * 9 + 2 * c * c * 9 + width * c + 4 * 2 * c
        width = c
    return total + width * ways + ways


# ------------------------------------------------------------------------ network shape


def _feature_sizes(net: nn.Module, x: Tensor) -> list[tuple[int, ...]]:
    sizes: list[tuple[int, ...]] = []
    hooks = [b.register_forward_hook(lambda m, i, o: sizes.append(o.shape[1:])) for b in net.blocks]
    try:
        net(x)
    finally:
        for hook in hooks:
            hook.remove()
    return sizes


def test_the_default_net_is_metaoptnets_resnet12_on_miniimagenet() -> None:
    net = _build(MINIIMAGENET)
    assert sum(p.numel() for p in net.parameters()) == _count(3, (64, 160, 320, 640), WAYS)
    assert sum(p.numel() for p in net.parameters()) == 12_427_525  # MetaOptNet's 12.4M + head
    assert net.head.in_features == 640  # global average pool
    x = torch.randn(2, *MINIIMAGENET.input_shape)
    sizes = _feature_sizes(net, x)
    assert sizes == [(64, 42, 42), (160, 21, 21), (320, 10, 10), (640, 5, 5)]
    assert net(x).shape == (2, WAYS)
    assert list(net.buffers()) == []  # a Learner would freeze buffers: there are none


def test_cifar_sized_images_end_at_2x2() -> None:
    net = _build(CIFAR, channels=TINY)
    x = torch.randn(3, *CIFAR.input_shape)
    assert _feature_sizes(net, x) == [(4, 16, 16), (8, 8, 8), (8, 4, 4), (8, 2, 2)]
    assert net(x).shape == (3, WAYS)


def test_one_net_accepts_every_size_its_pools_leave_something_of() -> None:
    net = _build(channels=TINY)
    for size in (16, 21, 32, 84):
        assert net(torch.randn(2, 3, size, size)).shape == (2, WAYS)


def test_blocks_are_three_conv_norms_and_a_shortcut() -> None:
    shapes = {k: tuple(v.shape) for k, v in _build(channels=TINY).named_parameters()}
    widths = (3, *TINY)
    expected: dict[str, tuple[int, ...]] = {}
    for i, c in enumerate(TINY):
        for j in range(3):
            expected[f"blocks.{i}.layers.{j}.conv.weight"] = (c, widths[i] if j == 0 else c, 3, 3)
            expected |= {f"blocks.{i}.layers.{j}.norm.{p}": (c,) for p in ("weight", "bias")}
        expected[f"blocks.{i}.shortcut.conv.weight"] = (c, widths[i], 1, 1)
        expected |= {f"blocks.{i}.shortcut.norm.{p}": (c,) for p in ("weight", "bias")}
    expected |= {"head.weight": (WAYS, 8), "head.bias": (WAYS,)}
    assert shapes == expected  # no conv biases: the norm after each would cancel them
    assert sum(map(lambda s: torch.Size(s).numel(), shapes.values())) == _count(3, TINY, WAYS)


def test_without_norm_the_convs_have_biases() -> None:
    net = _build(channels=TINY, norm="none")
    names = [k for k, _ in net.named_parameters()]
    assert not [k for k in names if "norm" in k]
    assert len([k for k in names if k.endswith("conv.bias")]) == 4 * 4


def test_norm_options_use_mamlflow_nn() -> None:
    kinds = {
        "batch": (BatchNorm, None),
        "group": (GroupNorm, 2),
        "layer": (GroupNorm, 1),
    }
    for norm, (cls, groups) in kinds.items():
        net = _build(channels=TINY, norm=norm, groups=2)
        layers = [m for m in net.modules() if isinstance(m, (BatchNorm, GroupNorm))]
        assert len(layers) == 4 * 4 and all(type(m) is cls for m in layers), norm
        if groups is not None:
            assert {m.num_groups for m in layers} == {groups}
        assert vmap_unsafe_layers(net) == []
        assert not [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]


def test_paper_init_is_kaiming_fan_out_with_zero_biases() -> None:
    torch.manual_seed(0)
    net = _build(MINIIMAGENET)
    conv = net.blocks[3].layers[1].conv  # 640 → 640: enough weights for a tight estimate
    std = (2 / (640 * 9)) ** 0.5  # Kaiming-normal, fan_out, gain √2
    assert abs(conv.weight.std().item() / std - 1) < 0.01
    assert torch.equal(net.head.bias, torch.zeros(WAYS))
    limit = (6 / (640 + WAYS)) ** 0.5  # Glorot-uniform head
    assert net.head.weight.abs().max() <= limit
    plain = _build(channels=TINY, norm="none")
    assert all(not m.bias.any() for m in plain.modules() if isinstance(m, nn.Conv2d))
    torch.manual_seed(0)
    default = _build(channels=TINY, norm="none", init="torch")
    assert any(m.bias.any() for m in default.modules() if isinstance(m, nn.Conv2d))


def test_predictions_use_the_batch_they_come_with_only_for_batch_norm() -> None:
    # batch: transductive, as conv4 and the paper; group/layer: each example on its own.
    x = torch.randn(5, 3, 16, 16, dtype=torch.float64)
    for norm, transductive in (("batch", True), ("group", False), ("layer", False)):
        net = _build(channels=TINY, norm=norm, groups=2).double()
        assert torch.allclose(net(x)[:2], net(x[:2])) is not transductive, norm


# ---------------------------------------------------------------------------- errors


def test_config_rejects_channels_groups_cannot_split() -> None:
    with pytest.raises(ValidationError, match="divisible by 3"):
        ResNet12Config(name="resnet12", channels=TINY, norm="group", groups=3)
    with pytest.raises(ValidationError, match="positive"):
        ResNet12Config(name="resnet12", channels=(4, 0))
    with pytest.raises(ValidationError):
        ResNet12Config(name="resnet12", channels=())
    with pytest.raises(ValidationError):
        ResNet12Config(name="resnet12", dropblock=0.1)  # type: ignore[call-arg]


def test_build_rejects_inputs_it_cannot_use() -> None:
    with pytest.raises(ConfigError, match="needs image inputs"):
        _build(ModelIO((1,), 1))
    with pytest.raises(ConfigError, match="at least 16×16"):
        _build(ModelIO((3, 8, 8), WAYS), channels=TINY)
    assert _build(ModelIO((3, 8, 8), WAYS), channels=(4, 4, 4)) is not None


def test_wrong_channels_or_rank_fail_with_the_expected_shape() -> None:
    net = _build(channels=TINY)
    with pytest.raises(ValueError, match=r"expects inputs of shape \(N, 3, H, W\)"):
        net(torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError, match=r"expects inputs of shape \(N, 3, H, W\)"):
        net(torch.randn(2, 768))


def test_it_is_a_registered_builtin() -> None:
    assert PluginHost(autoload=False).model("resnet12") is ResNet12


# ------------------------------------------------------------------------------ parity


@functools.cache
def _episode(dtype: torch.dtype, size: int = 16, tasks: int = NUM_TASKS) -> TaskBatch:
    """``tasks`` tasks of a 5-way 1-shot episode with ``QUERY`` query images per class."""
    g = torch.Generator().manual_seed(0)

    def part(per_class: int) -> dict[str, Tensor]:
        shape = (tasks, WAYS * per_class, 3, size, size)
        labels = torch.stack([torch.randperm(WAYS, generator=g) for _ in range(tasks)])
        x = torch.randn(shape, generator=g, dtype=torch.float64)
        return {"x": x, "y": labels.repeat(1, per_class)}

    return TaskBatch(part(1), part(QUERY), torch.arange(tasks)).to("cpu", dtype)


def _learner(dtype: torch.dtype, **options: object) -> Learner:
    with torch.random.fork_rng():
        torch.manual_seed(1)
        module = _build(**{"channels": TINY, **options})
    return Learner(module).to("cpu", dtype)


def _objective(learner: Learner) -> TaskObjective:
    def objective(params: Mapping[str, Tensor], data: Mapping[str, Tensor]) -> Tensor:
        return F.cross_entropy(learner(dict(params), data["x"]), data["y"])

    return objective


def _meta_step(
    learner: Learner,
    batch: TaskBatch,
    strategy: str,
    *,
    steps: int,
    first_order: bool,
    params: dict[str, Tensor] | None = None,
) -> StepResult:
    step = make_meta_step(
        _objective(learner),
        sgd(INNER_LR),
        steps=steps,
        first_order=first_order,
        strategy=strategy,  # type: ignore[arg-type]
    )
    theta = learner.init_params() if params is None else params
    return step(theta, {}, batch.support, batch.query, 1.0 / batch.num_tasks)


@functools.cache
def _run(norm: str, dtype: torch.dtype, strategy: str, steps: int, first_order: bool) -> StepResult:
    learner = _learner(dtype, norm=norm, groups=2)
    batch = _episode(dtype)
    return _meta_step(learner, batch, strategy, steps=steps, first_order=first_order)


def _assert_step_close(actual: StepResult, expected: StepResult) -> None:
    assert actual.grads.keys() == expected.grads.keys()
    # One scale for all: the meta-gradient of a parameter a norm cancels is rounding noise.
    scale = max(v.abs().max().item() for v in expected.grads.values())
    assert scale > 1e-3
    for k, want in [("loss", expected.loss), *expected.grads.items()]:
        got = actual.loss if k == "loss" else actual.grads[k]
        assert got.shape == want.shape and got.dtype == want.dtype, k
        size = max(1.0, want.abs().item() if k == "loss" else scale)
        if want.dtype == torch.float64:
            torch.testing.assert_close(got, want, rtol=0, atol=F64_RTOL * size, msg=k)
        else:
            torch.testing.assert_close(got, want, rtol=F32_RTOL, atol=F32_RTOL * size, msg=k)


def _parity_cases() -> Iterator[object]:
    for first_order in (False, True):
        for steps in (1, 2):
            order = "first" if first_order else "second"
            yield pytest.param("batch", first_order, steps, id=f"batch-{order}-{steps}")
    for norm in ("group", "layer", "none"):
        yield pytest.param(norm, False, 1, id=f"{norm}-second-1")


@pytest.mark.parametrize(("norm", "first_order", "steps"), list(_parity_cases()))
def test_batched_meta_gradients_match_the_loop_in_float64(
    norm: str, first_order: bool, steps: int
) -> None:
    expected = _run(norm, torch.float64, "loop", steps, first_order)
    actual = _run(norm, torch.float64, "batched", steps, first_order)
    _assert_step_close(actual, expected)


def test_batched_meta_gradients_match_the_loop_in_float32() -> None:
    expected = _run("batch", torch.float32, "loop", 1, False)
    _assert_step_close(_run("batch", torch.float32, "batched", 1, False), expected)


def _flat(tree: Mapping[str, Tensor]) -> Tensor:
    return torch.cat([v.reshape(-1) for v in tree.values()])


def _rel_diff(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    return ((_flat(a) - _flat(b)).norm() / _flat(b).norm()).item()


def test_second_order_terms_are_visible() -> None:
    # Otherwise the parity above could not tell a second-order kernel from a first-order one.
    second = _run("batch", torch.float64, "loop", 1, False)
    first = _run("batch", torch.float64, "loop", 1, True)
    assert _rel_diff(first.grads, second.grads) > 1e-2


def test_second_order_meta_gradient_matches_finite_differences() -> None:
    # Central differences of the meta-loss along random directions of the head. Along others
    # the meta-loss of a LeakyReLU/max-pool net is not even continuous: where the support pass
    # crosses a kink, the inner step's gradient jumps, and so does the adapted θ′ (measured: a
    # difference quotient of 417 for a derivative of 1.47). The head sits after the global
    # pool, so it leaves the support pass's kinks where they are; its meta-gradient still runs
    # through the Hessian's cross-terms with every conv and norm of the inner step.
    learner = _learner(torch.float64)
    batch = _episode(torch.float64, tasks=2)
    theta = learner.init_params()
    reference = _meta_step(learner, batch, "loop", steps=1, first_order=False)
    first = _meta_step(learner, batch, "loop", steps=1, first_order=True)
    g = torch.Generator().manual_seed(2)
    h = 1e-6  # measured error 1e-9; at 1e-4 the query pass's kinks cost 1e-2
    for _ in range(3):
        direction = {
            k: torch.randn(v.shape, generator=g, dtype=v.dtype)
            if k.startswith("head.")
            else torch.zeros_like(v)
            for k, v in theta.items()
        }

        def loss(sign: float, direction: dict[str, Tensor] = direction) -> float:
            moved = {k: v + sign * h * direction[k] for k, v in theta.items()}
            step = _meta_step(learner, batch, "loop", steps=1, first_order=False, params=moved)
            return step.loss.item()

        numeric = (loss(1.0) - loss(-1.0)) / (2 * h)
        analytic = (_flat(reference.grads) @ _flat(direction)).item()
        assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(analytic)), (numeric, analytic)
        first_order = (_flat(first.grads) @ _flat(direction)).item()
        assert abs(first_order - analytic) > 0.1 * abs(analytic)  # and not first order's


# --------------------------------------------------------------------------------- auto


@pytest.fixture
def fresh_selection_cache() -> Iterator[None]:
    clear_selection_cache()
    yield
    clear_selection_cache()


@pytest.mark.usefixtures("fresh_selection_cache")
def test_auto_picks_a_strategy_that_matches_the_loop() -> None:
    learner = _learner(torch.float32)
    batch = _episode(torch.float32)
    params = learner.init_params()
    selection = select_meta_step(
        "auto",
        _objective(learner),
        sgd(INNER_LR),
        steps=1,
        first_order=False,
        remaining_iterations=10,
        probe=(params, {}, batch.support, batch.query),
        module=learner.module,
    )
    # batched passed the float64 parity probe and was timed: it was a candidate, not refused.
    assert {"loop", "batched"} <= selection.timings.keys(), selection.reason
    assert selection.strategy in {"loop", "batched"}
    result = selection.step(params, {}, batch.support, batch.query, 1.0 / NUM_TASKS)
    _assert_step_close(result, _run("batch", torch.float32, "loop", 1, False))


# ----------------------------------------------------------------------- conformance


class _TemplatesConfig(TaskConfig):
    ways: int = Field(WAYS, ge=2)
    shots: int = Field(1, ge=1)
    query: int = Field(1, ge=1)
    size: int = Field(16, ge=1)


class _Templates(TaskFamily):
    """Few-shot classification of noisy copies of random colour images, one per class."""

    name: ClassVar[str] = "templates"
    Config: ClassVar[type[TaskConfig]] = _TemplatesConfig
    metric = "accuracy"
    config: _TemplatesConfig

    @property
    def io(self) -> ModelIO:
        return ModelIO((3, self.config.size, self.config.size), self.config.ways)

    def sample(
        self,
        seed: int,
        iteration: int,
        task_indices: Tensor,
        *,
        split: Split = "train",
        shots: int | None = None,
        query: int | None = None,
    ) -> TaskBatch:
        ways, pixels = self.config.ways, 3 * self.config.size**2
        base = (seed, SPLITS[split], iteration)
        templates = normal(derive_key(*base, 0), task_indices, ways * pixels)
        templates = templates.view(-1, ways, *self.io.input_shape)

        def part(stream: int, per_class: int) -> dict[str, Tensor]:
            labels = torch.arange(ways).repeat_interleave(per_class)
            noise = normal(derive_key(*base, stream), task_indices, ways * per_class * pixels)
            x = templates[:, labels] + 0.5 * noise.view(-1, ways * per_class, *self.io.input_shape)
            return {"x": x, "y": labels.expand(len(task_indices), -1).clone()}

        return TaskBatch(
            part(1, self.config.shots if shots is None else shots),
            part(2, self.config.query if query is None else query),
            task_indices.clone(),
        )

    def objective(self, model: Callable[[dict[str, Tensor], Tensor], Tensor]) -> TaskObjective:
        def cross_entropy(params: dict[str, Tensor], data: Mapping[str, Tensor]) -> Tensor:
            return F.cross_entropy(model(params, data["x"]), data["y"])

        return cross_entropy

    def score(self, model: Callable[[dict[str, Tensor], Tensor], Tensor]) -> TaskObjective:
        def accuracy(params: dict[str, Tensor], data: Mapping[str, Tensor]) -> Tensor:
            logits = model(params, data["x"])
            return (logits.argmax(-1) == data["y"]).to(logits.dtype).mean()

        return accuracy


@pytest.mark.parametrize("norm", ["batch", "group", "layer"])
def test_resnet12_passes_the_model_conformance_check(norm: str) -> None:
    model = ResNet12(ResNet12Config(name="resnet12", channels=TINY, norm=norm, groups=2))
    check_model(model, _Templates(_TemplatesConfig(name="templates")), tasks=2, steps=1)


# ------------------------------------------------------------- the nn.BatchNorm2d trap


def test_torch_batch_norm_in_its_place_gives_wrong_meta_gradients_under_vmap() -> None:
    """Why resnet12 normalises with ``mamlflow.nn``: the same net with torch's batch norm.

    ``nn.BatchNorm2d(track_running_stats=False)`` computes the same forward, and the loop's
    meta-gradient is right; vmap's second-order one is not (functorch #534, torch 2.13).
    """
    module = _learner(torch.float64).module
    for layer in list(module.modules()):
        for name, ours in list(layer.named_children()):
            if isinstance(ours, BatchNorm):
                theirs = nn.BatchNorm2d(ours.num_features, ours.eps, track_running_stats=False)
                theirs.load_state_dict(ours.state_dict())  # the same names: weight, bias
                setattr(layer, name, theirs)
    learner = Learner(module).to("cpu", torch.float64)
    assert len(vmap_unsafe_layers(module)) == 4 * 4
    batch = _episode(torch.float64)
    loop = _meta_step(learner, batch, "loop", steps=1, first_order=False)
    _assert_step_close(loop, _run("batch", torch.float64, "loop", 1, False))
    batched = _meta_step(learner, batch, "batched", steps=1, first_order=False)
    assert _rel_diff(batched.grads, loop.grads) > 1e-3  # measured: 1.9e-2
