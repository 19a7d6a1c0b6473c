"""``mamlflow.nn``'s normalisation layers against their reference twins, torch's modules.

Forward (and first-order backward) parity with torch in float64; second-order meta-gradients of
the batched kernel equal to the per-task loop's, where torch's own layers are measurably wrong;
and the table of docs/kernels.md, which says which torch layers are safe, checked against what
torch actually does here and against ``vmap_unsafe_layers``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

import mamlflow.nn as safe
from mamlflow.core import Learner, StepResult, sgd
from mamlflow.kernels import make_meta_step

DOCS = Path(__file__).resolve().parents[2] / "docs" / "kernels.md"
F64_ATOL = 1e-12
RIGHT = 1e-12  # a right kernel: float64 rounding (measured ≤ 1e-15)
WRONG = 1e-4  # a wrong one: the smallest error docs/kernels.md promises
C = 6  # channels / features

Layer = Callable[[], nn.Module]

# -- forward parity --------------------------------------------------------------------------

FORWARD: dict[str, tuple[Layer, Layer, tuple[int, ...]]] = {
    # name: (ours, torch's, input shape)
    "layer-norm": (lambda: safe.LayerNorm(C), lambda: nn.LayerNorm(C), (5, C)),
    "layer-norm-3d": (
        lambda: safe.LayerNorm((C, 4, 5), eps=1e-3),
        lambda: nn.LayerNorm((C, 4, 5), eps=1e-3),
        (3, C, 4, 5),
    ),
    "layer-norm-no-affine": (
        lambda: safe.LayerNorm(C, elementwise_affine=False),
        lambda: nn.LayerNorm(C, elementwise_affine=False),
        (2, 5, C),
    ),
    "layer-norm-no-bias": (
        lambda: safe.LayerNorm(C, bias=False),
        lambda: nn.LayerNorm(C, bias=False),
        (5, C),
    ),
    "batch-norm-1d-flat": (
        lambda: safe.BatchNorm(C),
        lambda: nn.BatchNorm1d(C, track_running_stats=False),
        (7, C),
    ),
    "batch-norm-1d": (
        lambda: safe.BatchNorm(C, eps=1e-3),
        lambda: nn.BatchNorm1d(C, eps=1e-3, track_running_stats=False),
        (4, C, 9),
    ),
    "batch-norm-2d": (
        lambda: safe.BatchNorm(C),
        lambda: nn.BatchNorm2d(C, track_running_stats=False),
        (4, C, 5, 5),
    ),
    "batch-norm-3d": (
        lambda: safe.BatchNorm(C),
        lambda: nn.BatchNorm3d(C, track_running_stats=False),
        (2, C, 3, 4, 3),
    ),
    "batch-norm-no-affine": (
        lambda: safe.BatchNorm(C, affine=False),
        lambda: nn.BatchNorm2d(C, affine=False, track_running_stats=False),
        (4, C, 3, 3),
    ),
    "group-norm": (lambda: safe.GroupNorm(3, C), lambda: nn.GroupNorm(3, C), (4, C, 5, 5)),
    "group-norm-flat": (lambda: safe.GroupNorm(2, C), lambda: nn.GroupNorm(2, C), (4, C)),
    "group-norm-1d": (
        lambda: safe.GroupNorm(1, C, eps=1e-3),
        lambda: nn.GroupNorm(1, C, eps=1e-3),
        (4, C, 7),
    ),
    "group-norm-no-affine": (
        lambda: safe.GroupNorm(2, C, affine=False),
        lambda: nn.GroupNorm(2, C, affine=False),
        (4, C, 3, 3),
    ),
    "instance-norm-as-group-norm": (
        lambda: safe.GroupNorm(C, C),
        lambda: nn.InstanceNorm2d(C, affine=True),
        (3, C, 5, 5),
    ),
}


def _randomise(module: nn.Module) -> None:
    """Affine parameters away from (1, 0), so a dropped or misplaced one shows."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p))


@pytest.mark.parametrize("name", list(FORWARD))
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_forward_and_backward_match_torch_in_float64(name: str, mode: str) -> None:
    ours_fn, theirs_fn, shape = FORWARD[name]
    theirs = theirs_fn().double()
    _randomise(theirs)
    ours = ours_fn().double()
    ours.load_state_dict(theirs.state_dict())  # same parameter names: state dicts move across
    ours.train(mode == "train")
    theirs.train(mode == "train")
    x = (3 * torch.randn(shape, dtype=torch.float64) + 1).requires_grad_(True)
    out = ours(x)
    want = theirs(x)
    torch.testing.assert_close(out, want, rtol=0, atol=F64_ATOL)
    # first-order gradients w.r.t. the input and the parameters, through a random functional
    probe = torch.randn_like(want)
    got = torch.autograd.grad((out * probe).sum(), [x, *ours.parameters()])
    expected = torch.autograd.grad((want * probe).sum(), [x, *theirs.parameters()])
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-10)


def test_layers_refuse_what_torch_refuses() -> None:
    with pytest.raises(ValueError, match="multiple of num_groups"):
        safe.GroupNorm(4, C)
    with pytest.raises(ValueError, match="trailing dimensions"):
        safe.LayerNorm(C)(torch.randn(2, C + 1))
    with pytest.raises(ValueError, match=r"expects \(N, 6, \*\)"):
        safe.BatchNorm(C)(torch.randn(2, C + 1, 3))
    with pytest.raises(ValueError, match="track_running_stats=False"):
        safe.BatchNorm(C, track_running_stats=True)


def test_layers_take_torchs_common_arguments() -> None:
    # positional order as torch's: (num_features, eps, momentum, affine)
    norm = safe.BatchNorm(C, 1e-3, 0.1, False)
    assert (norm.eps, norm.affine, norm.weight) == (1e-3, False, None)
    layer = safe.LayerNorm([C, 2], 1e-6, True, False, dtype=torch.float64)
    assert layer.normalized_shape == (C, 2) and layer.bias is None
    assert layer.weight is not None and layer.weight.dtype == torch.float64
    assert [k for k, _ in safe.GroupNorm(2, C).named_parameters()] == ["weight", "bias"]


# -- second-order meta-gradients under vmap ----------------------------------------------------


class _Functional(nn.Module):
    """A norm written as torch's functional form, with an affine weight and bias."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op
        self.weight = nn.Parameter(torch.ones(C))
        self.bias = nn.Parameter(torch.zeros(C))

    def forward(self, x: Tensor) -> Tensor:
        if self.op == "layer_norm":
            return F.layer_norm(x, (C,), self.weight, self.bias)
        if self.op == "batch_norm":
            return F.batch_norm(x, None, None, self.weight, self.bias, training=True)
        if self.op == "instance_norm":
            return F.instance_norm(x, weight=self.weight, bias=self.bias)
        return F.group_norm(x, 2, self.weight, self.bias)


# Which layers the batched kernel gets right. ``vector``: after a Linear on (N, 3) inputs;
# ``image``: after a Conv2d on (N, 1, 4, 4). The verdicts are docs/kernels.md's table.
CASES: dict[str, tuple[str, Layer, str]] = {
    "nn.LayerNorm": ("vector", lambda: nn.LayerNorm(C), "wrong"),
    "nn.LayerNorm(bias=False)": ("vector", lambda: nn.LayerNorm(C, bias=False), "wrong"),
    "nn.LayerNorm(elementwise_affine=False)": (
        "vector",
        lambda: nn.LayerNorm(C, elementwise_affine=False),
        "right",
    ),
    "F.layer_norm": ("vector", lambda: _Functional("layer_norm"), "wrong"),
    "nn.BatchNorm1d(track_running_stats=False)": (
        "vector",
        lambda: nn.BatchNorm1d(C, track_running_stats=False),
        "wrong",
    ),
    "nn.BatchNorm2d(track_running_stats=False)": (
        "image",
        lambda: nn.BatchNorm2d(C, track_running_stats=False),
        "wrong",
    ),
    "nn.BatchNorm2d(affine=False, track_running_stats=False)": (
        "image",
        lambda: nn.BatchNorm2d(C, affine=False, track_running_stats=False),
        "right",
    ),
    "nn.BatchNorm2d": ("image", lambda: nn.BatchNorm2d(C), "raises"),
    "F.batch_norm": ("image", lambda: _Functional("batch_norm"), "wrong"),
    "nn.InstanceNorm2d(affine=True)": (
        "image",
        lambda: nn.InstanceNorm2d(C, affine=True),
        "wrong",
    ),
    "nn.InstanceNorm2d": ("image", lambda: nn.InstanceNorm2d(C), "right"),
    "F.instance_norm": ("image", lambda: _Functional("instance_norm"), "wrong"),
    "nn.GroupNorm": ("image", lambda: nn.GroupNorm(2, C), "right"),
    "F.group_norm": ("image", lambda: _Functional("group_norm"), "right"),
    "nn.RMSNorm": ("vector", lambda: nn.RMSNorm(C), "right"),
    "nn.Dropout": ("vector", lambda: nn.Dropout(0.1), "raises"),
    "mamlflow.nn.LayerNorm": ("vector", lambda: safe.LayerNorm(C), "right"),
    "mamlflow.nn.BatchNorm": ("image", lambda: safe.BatchNorm(C), "right"),
    "mamlflow.nn.GroupNorm": ("image", lambda: safe.GroupNorm(2, C), "right"),
}
TORCH_LAYERS = [k for k, (_, _, verdict) in CASES.items() if not k.startswith("mamlflow")]


def _model(kind: str, norm: nn.Module, dtype: torch.dtype) -> Learner:
    torch.manual_seed(0)
    if kind == "vector":
        module = nn.Sequential(nn.Linear(3, C), norm, nn.Tanh(), nn.Linear(C, 1))
    else:
        module = nn.Sequential(
            nn.Conv2d(1, C, 3, padding=1), norm, nn.Tanh(), nn.Flatten(), nn.Linear(C * 16, 1)
        )
    _randomise(norm)
    return Learner(module).to("cpu", dtype)


def _meta_gradients(
    learner: Learner, strategy: str, dtype: torch.dtype, steps: int, first_order: bool = False
) -> StepResult:
    def objective(params: dict[str, Tensor], data: dict[str, Tensor]) -> Tensor:
        return ((learner(params, data["x"]) - data["y"]) ** 2).mean()

    shape = (3,) if next(iter(learner.module.children())).__class__ is nn.Linear else (1, 4, 4)
    g = torch.Generator().manual_seed(1)
    tasks = 4

    def data(n: int) -> dict[str, Tensor]:
        x = torch.randn(tasks, n, *shape, generator=g, dtype=dtype)
        return {"x": x, "y": torch.randn(tasks, n, 1, generator=g, dtype=dtype)}

    support, query = data(5), data(6)
    step = make_meta_step(
        objective, sgd(0.1), steps=steps, first_order=first_order, strategy=strategy
    )
    return step(learner.init_params(), {}, support, query, 1 / tasks)


def _discrepancy(case: str, steps: int = 2, first_order: bool = False) -> float:
    """Largest |batched - loop| meta-gradient entry over the largest loop entry, in float64."""
    kind, layer, _ = CASES[case]
    learner = _model(kind, layer(), torch.float64)
    loop = _meta_gradients(learner, "loop", torch.float64, steps, first_order).grads
    batched = _meta_gradients(learner, "batched", torch.float64, steps, first_order).grads
    scale = max(v.abs().max().item() for v in loop.values())
    return max((batched[k] - v).abs().max().item() for k, v in loop.items()) / scale


def _measured(case: str) -> str:
    try:
        error = _discrepancy(case)
    except RuntimeError:
        return "raises"
    assert error <= RIGHT or error >= WRONG, f"{case}: {error:.1e} is neither right nor wrong"
    return "right" if error <= RIGHT else "wrong"


@pytest.mark.parametrize("case", list(CASES))
def test_batched_second_order_is_right_exactly_where_the_table_says(case: str) -> None:
    assert _measured(case) == CASES[case][2]


@pytest.mark.parametrize("case", ["mamlflow.nn.LayerNorm", "mamlflow.nn.BatchNorm"])
@pytest.mark.parametrize("steps", [1, 3])
def test_safe_layers_match_the_loop_over_several_inner_steps(case: str, steps: int) -> None:
    assert _discrepancy(case, steps=steps) <= RIGHT
    assert _discrepancy(case, steps=steps, first_order=True) <= RIGHT


def test_first_and_second_order_differ_through_the_safe_layers() -> None:
    # The second-order term really flows through the normalisation (else parity is vacuous).
    learner = _model("vector", safe.LayerNorm(C), torch.float64)
    second = _meta_gradients(learner, "loop", torch.float64, 2).grads
    first = _meta_gradients(learner, "loop", torch.float64, 2, first_order=True).grads
    assert max((second[k] - first[k]).abs().max().item() for k in second) > 1e-4


def test_the_safe_layers_compute_what_torch_computes_inside_a_model() -> None:
    # Same parameters, same meta-gradient from the loop: the replacement changes no numbers.
    for kind, ours, theirs in (
        ("vector", safe.LayerNorm(C), nn.LayerNorm(C)),
        ("image", safe.BatchNorm(C), nn.BatchNorm2d(C, track_running_stats=False)),
    ):
        a = _model(kind, ours, torch.float64)
        b = _model(kind, theirs, torch.float64)
        b.module.load_state_dict(a.module.state_dict())
        got = _meta_gradients(a, "loop", torch.float64, 2).grads
        want = _meta_gradients(b, "loop", torch.float64, 2).grads
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-10)


# -- the scan and the docs table ---------------------------------------------------------------


def test_the_scan_names_exactly_the_torch_layers_that_are_wrong_or_raise() -> None:
    for case, (kind, layer, verdict) in CASES.items():
        if case.startswith("F.") or case == "nn.Dropout":
            continue  # functional calls are no layers; dropout has nothing to replace it with
        found = safe.vmap_unsafe_layers(_model(kind, layer(), torch.float64).module)
        if verdict == "right":
            assert found == [], case
        else:
            assert len(found) == 1 and found[0].startswith("1 ("), (case, found)
            assert "use mamlflow.nn." in found[0]


def test_the_scan_names_each_layer_by_its_path() -> None:
    model = nn.Sequential(
        nn.Linear(2, C),
        nn.Sequential(nn.LayerNorm(C), nn.LayerNorm(C, elementwise_affine=False)),
        nn.InstanceNorm1d(C, affine=True),
    )
    assert safe.vmap_unsafe_layers(model) == [
        "1.0 (LayerNorm: use mamlflow.nn.LayerNorm)",
        "2 (InstanceNorm1d: use mamlflow.nn.GroupNorm(C, C))",
    ]
    assert safe.vmap_unsafe_layers(nn.LayerNorm(C)) == [
        "(the model) (LayerNorm: use mamlflow.nn.LayerNorm)"
    ]


def _docs_table() -> dict[str, str]:
    """``{layer: verdict}`` from the table in docs/kernels.md's vmap-safety section."""
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("## Layers that are wrong under vmap", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \| (right|wrong|raises)\b", section, flags=re.M)
    return dict(rows)


def test_the_docs_table_is_what_torch_does_here() -> None:
    table = _docs_table()
    assert set(table) == set(TORCH_LAYERS)
    for case in TORCH_LAYERS:
        assert table[case] == CASES[case][2], case


def test_first_order_is_right_even_through_torchs_layers() -> None:
    for case in TORCH_LAYERS:
        if CASES[case][2] == "wrong":
            error = _discrepancy(case, first_order=True)
            assert error <= RIGHT and not math.isnan(error), case
