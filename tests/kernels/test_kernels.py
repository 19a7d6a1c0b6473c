"""Parity of the meta-step kernels: every fast strategy against the reference ``loop``.

Everything runs on the real sinusoid family and the real MLP. The loop (plain autograd, one task
at a time) is the oracle; it is itself checked against central finite differences on a tiny
smooth model, so a bug shared by all three strategies still fails here. Parity means losses *and*
gradients, for θ and for an adapter's learnable tensors φ.

Compiling is the slow part on a 2-core CPU (5–30 s per variant, cold), so only the cases the
issue asks for are compiled, and those are marked ``slow`` (``-m "not slow"`` skips them).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor
from torch._dynamo.utils import counters

from mamlflow.core import (
    Adapter,
    ConfigError,
    Learner,
    Params,
    StepResult,
    TaskBatch,
    TaskObjective,
    sgd,
)
from mamlflow.engine import COMPILED_STRATEGIES
from mamlflow.kernels import (
    AUTO_COMPILE_MIN_SECONDS,
    Selection,
    _select,
    clear_selection_cache,
    make_adapt,
    make_adapt_curve,
    make_meta_step,
    select_meta_step,
)
from mamlflow.plugins.metasgd import PerParameterSGD
from mamlflow.plugins.mlp import MLP, MLPConfig
from mamlflow.plugins.sinusoid import Sinusoid, SinusoidConfig

INNER_LR = 0.01
META_BATCH = 5
F64_ATOL = 1e-10  # max abs error, float64
F32_RTOL = 1e-5  # relative to the largest reference entry, float32


def _meta_sgd(lr: float = INNER_LR) -> Adapter:
    """Meta-SGD's inner loop (the metasgd plugin's): a meta-learned rate for every entry."""
    return PerParameterSGD(lr)


@dataclass(frozen=True)
class Problem:
    learner: Learner
    objective: TaskObjective
    params: Params
    batch: TaskBatch


@functools.cache
def _problem(
    dtype: torch.dtype = torch.float64,
    hidden: tuple[int, ...] = (40, 40),
    activation: str = "relu",
    num_tasks: int = META_BATCH,
) -> Problem:
    family = Sinusoid(SinusoidConfig(name="sinusoid"))
    with torch.random.fork_rng():
        torch.manual_seed(1)
        module = MLP(MLPConfig(name="mlp", hidden=hidden, activation=activation)).build(family.io)
    learner = Learner(module).to("cpu", dtype)
    batch = family.sample(0, 0, torch.arange(num_tasks)).to("cpu", dtype)
    return Problem(learner, family.objective(learner), learner.init_params(), batch)


def _run(
    problem: Problem,
    adapter: Adapter,
    strategy: str,
    *,
    steps: int,
    first_order: bool,
    learnables: Params | None = None,
    batch: TaskBatch | None = None,
    scale: float = 1.0 / META_BATCH,
) -> StepResult:
    step = make_meta_step(
        problem.objective, adapter, steps=steps, first_order=first_order, strategy=strategy
    )
    batch = problem.batch if batch is None else batch
    if learnables is None:
        learnables = adapter.learnables(problem.params)
    return step(problem.params, learnables, batch.support, batch.query, scale)


@functools.cache
def _reference(
    dtype: torch.dtype, first_order: bool, steps: int, adapter_name: str = "sgd"
) -> StepResult:
    adapter = _meta_sgd() if adapter_name == "meta-sgd" else sgd(INNER_LR)
    return _run(_problem(dtype), adapter, "loop", steps=steps, first_order=first_order)


def _assert_tree_close(actual: Mapping[str, Tensor], expected: Mapping[str, Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for k, want in expected.items():
        got = actual[k]
        assert got.shape == want.shape and got.dtype == want.dtype, k
        if want.dtype == torch.float64:
            torch.testing.assert_close(
                got, want, rtol=0, atol=F64_ATOL, msg=lambda m, k=k: f"{k}: {m}"
            )
        else:
            scale = max(want.abs().max().item(), torch.finfo(want.dtype).tiny)
            torch.testing.assert_close(
                got, want, rtol=F32_RTOL, atol=F32_RTOL * scale, msg=lambda m, k=k: f"{k}: {m}"
            )


def _assert_step_close(actual: StepResult, expected: StepResult) -> None:
    _assert_tree_close({"loss": actual.loss}, {"loss": expected.loss})
    _assert_tree_close(actual.grads, expected.grads)
    _assert_tree_close(actual.learnable_grads, expected.learnable_grads)


def _flat(tree: Mapping[str, Tensor]) -> Tensor:
    return torch.cat([v.reshape(-1) for v in tree.values()])


def _rel_diff(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    return ((_flat(a) - _flat(b)).norm() / _flat(b).norm()).item()


@pytest.fixture
def fresh_compiler() -> Iterator[Callable[[], int]]:
    """A clean dynamo cache, and a counter of graphs compiled since the test began.

    The count lets a test prove the compiled path really compiled instead of falling back to
    eager (which would pass any parity check vacuously).
    """
    torch._dynamo.reset()
    before = counters["stats"]["unique_graphs"]
    yield lambda: counters["stats"]["unique_graphs"] - before
    torch._dynamo.reset()


# ----------------------------------------------------------------------------------- parity


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _order(first_order: bool) -> str:
    return "first" if first_order else "second"


def _parity_cases() -> Iterator[object]:
    slow = pytest.mark.slow
    for dtype in (torch.float64, torch.float32):
        for first_order in (True, False):
            for steps in (1, 3):
                case = ("batched", dtype, first_order, steps)
                name = f"batched-{_order(first_order)}-{steps}-{_dtype_name(dtype)}"
                yield pytest.param(*case, id=name)
    # Compiling costs seconds per variant: every order × steps in float64, one float32 case.
    for first_order in (True, False):
        for steps in (1, 3):
            case = ("compiled", torch.float64, first_order, steps)
            yield pytest.param(
                *case, id=f"compiled-{_order(first_order)}-{steps}-float64", marks=slow
            )
    yield pytest.param(
        "compiled", torch.float32, False, 1, id="compiled-second-1-float32", marks=slow
    )
    for case in ((torch.float64, False, 1), (torch.float64, True, 3), (torch.float32, False, 1)):
        for strategy in ("compiled-loop", "compiled-split"):
            name = f"{strategy}-{_order(case[1])}-{case[2]}-{_dtype_name(case[0])}"
            yield pytest.param(strategy, *case, id=name, marks=slow)


@pytest.mark.parametrize(("strategy", "dtype", "first_order", "steps"), list(_parity_cases()))
def test_meta_step_matches_loop(
    strategy: str, dtype: torch.dtype, first_order: bool, steps: int, request: pytest.FixtureRequest
) -> None:
    graphs = request.getfixturevalue("fresh_compiler") if strategy in COMPILED_STRATEGIES else None
    expected = _reference(dtype, first_order, steps)
    actual = _run(_problem(dtype), sgd(INNER_LR), strategy, steps=steps, first_order=first_order)
    _assert_step_close(actual, expected)
    assert actual.learnable_grads == {}
    assert _flat(expected.grads).abs().max() > 0
    if graphs is not None:
        assert graphs() >= 1, "the compiled strategy ran eagerly"


@pytest.mark.parametrize(
    ("strategy", "first_order"),
    [
        pytest.param("batched", False, id="batched-second"),
        pytest.param("batched", True, id="batched-first"),
        pytest.param("compiled", False, id="compiled-second", marks=pytest.mark.slow),
        pytest.param("compiled-loop", False, id="compiled-loop-second", marks=pytest.mark.slow),
        pytest.param("compiled-split", False, id="compiled-split-second", marks=pytest.mark.slow),
        pytest.param("compiled-split", True, id="compiled-split-first", marks=pytest.mark.slow),
    ],
)
def test_learnable_adapter_matches_loop(
    strategy: str, first_order: bool, request: pytest.FixtureRequest
) -> None:
    graphs = request.getfixturevalue("fresh_compiler") if strategy in COMPILED_STRATEGIES else None
    expected = _reference(torch.float64, first_order, 2, "meta-sgd")
    actual = _run(_problem(), _meta_sgd(), strategy, steps=2, first_order=first_order)
    _assert_step_close(actual, expected)
    assert expected.learnable_grads.keys() == _problem().params.keys()
    assert _flat(expected.learnable_grads).abs().max() > 0
    if graphs is not None:
        assert graphs() >= 1, "the compiled strategy ran eagerly"


# -------------------------------------------------------------------- finite differences


def _central_differences(f: Callable[[Params], float], tree: Params, eps: float) -> Params:
    out = {}
    for k, v in tree.items():
        g = torch.zeros_like(v).reshape(-1)
        for i in range(v.numel()):
            plus, minus = v.clone().reshape(-1), v.clone().reshape(-1)
            plus[i] += eps
            minus[i] -= eps
            g[i] = f({**tree, k: plus.reshape(v.shape)}) - f({**tree, k: minus.reshape(v.shape)})
            g[i] /= 2 * eps
        out[k] = g.reshape(v.shape)
    return out


@pytest.mark.parametrize("strategy", ["loop", "batched"])
def test_second_order_meta_gradient_matches_finite_differences(strategy: str) -> None:
    # Tiny and smooth (tanh) so that every coordinate can be differenced; a large inner lr and
    # two steps make the second-order terms big enough that first order would fail this check.
    problem = _problem(torch.float64, hidden=(3,), activation="tanh", num_tasks=2)
    adapter = _meta_sgd(lr=0.3)
    lr = adapter.learnables(problem.params)
    support, query = problem.batch.support, problem.batch.query
    loop = make_meta_step(problem.objective, adapter, steps=2, first_order=False, strategy="loop")

    def meta_loss(params: Params, learnables: Params) -> float:
        return loop(params, learnables, support, query, 0.5).loss.item()

    fd_theta = _central_differences(lambda p: meta_loss(p, lr), problem.params, 1e-5)
    fd_phi = _central_differences(lambda phi: meta_loss(problem.params, phi), lr, 1e-5)

    def check(actual: Params, expected: Params) -> None:
        scale = _flat(expected).abs().max().item()
        torch.testing.assert_close(_flat(actual), _flat(expected), rtol=1e-6, atol=1e-6 * scale)

    result = _run(problem, adapter, strategy, steps=2, first_order=False, learnables=lr, scale=0.5)
    check(result.grads, fd_theta)
    check(result.learnable_grads, fd_phi)
    # The check discriminates: the first-order meta-gradient is visibly off.
    fomaml = _run(problem, adapter, strategy, steps=2, first_order=True, learnables=lr, scale=0.5)
    assert _rel_diff(fomaml.grads, fd_theta) > 1e-3


@pytest.mark.parametrize("strategy", ["loop", "batched"])
def test_first_and_second_order_differ_only_with_inner_steps(strategy: str) -> None:
    problem = _problem()
    first = _run(problem, sgd(INNER_LR), strategy, steps=1, first_order=True)
    second = _run(problem, sgd(INNER_LR), strategy, steps=1, first_order=False)
    assert _rel_diff(first.grads, second.grads) > 1e-3
    torch.testing.assert_close(first.loss, second.loss, rtol=0, atol=0)  # same forward pass

    first = _run(problem, sgd(INNER_LR), strategy, steps=0, first_order=True)
    second = _run(problem, sgd(INNER_LR), strategy, steps=0, first_order=False)
    _assert_tree_close(first.grads, second.grads)
    torch.testing.assert_close(first.loss, second.loss, rtol=0, atol=0)


# --------------------------------------------------------------------------- sharding


@pytest.mark.parametrize("strategy", ["loop", "batched"])
def test_shard_results_sum_to_the_full_batch(strategy: str) -> None:
    # Data-parallel training all-reduces (sums) shard results computed with scale 1 / global
    # meta-batch size; the sum must be the full batch's result.
    problem = _problem()
    adapter = _meta_sgd()
    full = _run(problem, adapter, strategy, steps=2, first_order=False)
    shards = [
        _run(
            problem, adapter, strategy, steps=2, first_order=False, batch=problem.batch.shard(a, b)
        )
        for a, b in ((0, 2), (2, META_BATCH))
    ]

    def total(get: Callable[[StepResult], Params]) -> Params:
        return {k: sum(get(s)[k] for s in shards) for k in get(full)}

    _assert_tree_close({"loss": sum(s.loss for s in shards)}, {"loss": full.loss})
    _assert_tree_close(total(lambda s: s.grads), full.grads)
    _assert_tree_close(total(lambda s: s.learnable_grads), full.learnable_grads)


def test_scale_multiplies_loss_and_gradients() -> None:
    problem = _problem()
    unit = _run(problem, sgd(INNER_LR), "batched", steps=1, first_order=False, scale=1.0)
    mean = _run(problem, sgd(INNER_LR), "batched", steps=1, first_order=False)
    _assert_tree_close({"loss": mean.loss * META_BATCH}, {"loss": unit.loss})
    _assert_tree_close({k: v * META_BATCH for k, v in mean.grads.items()}, unit.grads)


# ---------------------------------------------------------------------- adapt and curve


def _adapt_by_hand(
    objective: TaskObjective, params: Params, data: Mapping[str, Tensor], lr: Params, steps: int
) -> list[Params]:
    """Per-task SGD with plain autograd: the parameters after 0, 1, …, ``steps`` steps."""
    path = [dict(params)]
    for _ in range(steps):
        leaves = {k: v.detach().requires_grad_(True) for k, v in path[-1].items()}
        grads = torch.autograd.grad(objective(leaves, data), list(leaves.values()))
        path.append(
            {k: (v - lr[k] * g).detach() for (k, v), g in zip(leaves.items(), grads, strict=True)}
        )
    return path


def _task(data: Mapping[str, Tensor], i: int) -> dict[str, Tensor]:
    return {k: v[i] for k, v in data.items()}


@pytest.mark.parametrize("adapter_name", ["sgd", "meta-sgd"])
def test_adapt_and_curve_match_a_per_task_loop(adapter_name: str) -> None:
    problem = _problem()
    steps, params, batch = 3, problem.params, problem.batch
    if adapter_name == "sgd":
        adapter: Adapter = sgd(0.05)
        learnables: Params = {}
        lr = {k: torch.full_like(v, 0.05) for k, v in params.items()}
    else:  # a different learning rate for every entry
        adapter = _meta_sgd()
        learnables = {k: 0.01 + 0.04 * torch.rand_like(v) for k, v in params.items()}
        lr = learnables
    score = problem.objective  # mse is both the objective and the score of this family

    adapted = make_adapt(problem.objective, adapter, steps=steps)(params, learnables, batch.support)
    scores, curve_adapted = make_adapt_curve(problem.objective, score, adapter, steps=steps)(
        params, learnables, batch.support, batch.query
    )
    assert scores.shape == (META_BATCH, steps + 1)
    assert not scores.requires_grad and not any(v.requires_grad for v in adapted.values())
    for i in range(META_BATCH):
        path = _adapt_by_hand(problem.objective, params, _task(batch.support, i), lr, steps)
        _assert_tree_close(_task(adapted, i), path[-1])
        _assert_tree_close(_task(curve_adapted, i), path[-1])
        expected_scores = torch.stack([score(p, _task(batch.query, i)) for p in path]).detach()
        _assert_tree_close({"scores": scores[i]}, {"scores": expected_scores})
        with torch.no_grad():
            assert torch.equal(scores[i, 0], score(params, _task(batch.query, i)))
        assert _rel_diff(path[-1], params) > 1e-6  # adaptation really moved the parameters


def test_curve_scales_the_steps_after_the_first() -> None:
    """``eval.later_steps_lr_scale``: step 1 at the adapter's rate, later ones at a fraction."""
    problem = _problem()
    params, batch = problem.params, problem.batch
    scores, adapted = make_adapt_curve(
        problem.objective, problem.objective, sgd(0.05), steps=3, later_scale=0.5
    )(params, {}, batch.support, batch.query)
    for i in range(META_BATCH):
        data = _task(batch.support, i)
        first = _adapt_by_hand(problem.objective, params, data, _rates(params, 0.05), 1)
        rest = _adapt_by_hand(problem.objective, first[-1], data, _rates(params, 0.025), 2)
        _assert_tree_close(_task(adapted, i), rest[-1])
        expected = torch.stack(
            [problem.objective(p, _task(batch.query, i)) for p in first + rest[1:]]
        )
        _assert_tree_close({"s": scores[i]}, {"s": expected.detach()})


def _rates(params: Params, lr: float) -> Params:
    return {k: torch.full_like(v, lr) for k, v in params.items()}


# ----------------------------------------------------------------------------- selection


def _probe(problem: Problem, adapter: Adapter) -> tuple[Params, Params, Params, Params]:
    b = problem.batch
    return problem.params, adapter.learnables(problem.params), b.support, b.query


def _choose(
    requested: str,
    remaining: int,
    time_left: float | None = None,
    signature: object = None,
    dtype: torch.dtype = torch.float64,
) -> Selection:
    problem, adapter = _problem(dtype), sgd(INNER_LR)
    return select_meta_step(
        requested,
        problem.objective,
        adapter,
        steps=1,
        first_order=False,
        remaining_iterations=remaining,
        probe=_probe(problem, adapter),
        time_left=time_left,
        signature=signature,
    )


@pytest.fixture(autouse=True)
def _fresh_selection_cache() -> Iterator[None]:
    clear_selection_cache()
    yield
    clear_selection_cache()


def _timings(monkeypatch: pytest.MonkeyPatch, **seconds: float) -> list[str]:
    """Make ``auto``'s measurements come out as given (real timings are machine noise).

    Returns the strategies timed, in order (``_confirm``'s interleaved rounds give the same
    numbers and are not listed).
    """
    timed: list[str] = []

    def fake(strategy: str, step: object, probe: object, scale: object) -> float:
        timed.append(strategy)
        return seconds[strategy.replace("-", "_")]

    def once(strategy: str, step: object, probe: object, scale: object) -> float:
        return seconds[strategy.replace("-", "_")]  # the confirming rounds, not recorded

    monkeypatch.setattr(_select, "_seconds_per_step", fake)
    monkeypatch.setattr(_select, "_time_once", once)
    return timed


# A run long enough that every compile pays: 10× the threshold at 1 s per step.
LONG = int(10 * AUTO_COMPILE_MIN_SECONDS)


def _check_runs_right(selection: Selection) -> None:
    _assert_step_close(
        selection.step(*_probe(_problem(), sgd(INNER_LR)), 0.2), _reference(torch.float64, False, 1)
    )


def test_auto_really_times_the_candidates() -> None:
    selection = _choose("auto", 10)
    assert selection.strategy in ("loop", "batched")
    assert re.search(r"loop [\d.e+-]+ ms, batched [\d.e+-]+ ms per step", selection.reason)
    assert "too few to repay a compile" in selection.reason
    assert set(selection.timings) == {"loop", "batched"}


def test_auto_keeps_the_loop_when_batching_does_not_pay(monkeypatch: pytest.MonkeyPatch) -> None:
    # What happens to convolutions on a CPU: vmap turns them into slower grouped convolutions.
    _timings(monkeypatch, loop=1.0, batched=2.3)
    selection = _choose("auto", 10)
    assert selection.strategy == "loop" and "does not pay" in selection.reason
    _check_runs_right(selection)


def test_auto_picks_batched_for_short_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    _timings(monkeypatch, loop=6.0, batched=1.0)
    selection = _choose("auto", 100)
    assert selection.strategy == "batched"
    assert "100 iterations (~100 s): too few" in selection.reason
    _check_runs_right(selection)


@pytest.mark.parametrize("strategy", ["loop", "batched", *sorted(COMPILED_STRATEGIES)])
def test_explicit_strategy_is_honoured(strategy: str) -> None:
    selection = _choose(strategy, LONG)
    assert (selection.strategy, selection.reason) == (strategy, "requested")
    if strategy not in COMPILED_STRATEGIES:  # building is lazy; running compiled ones: above
        _check_runs_right(selection)


@pytest.mark.parametrize("requested", ["bached", "Auto", ""])
def test_unknown_strategy_raises(requested: str) -> None:
    with pytest.raises(ValueError, match="unknown kernel strategy"):
        _choose(requested, 10)


def test_cudagraphs_on_a_cpu_names_the_fix() -> None:
    selection = _choose("cudagraphs", 10)
    with pytest.raises(ConfigError, match=r"cudagraphs needs a CUDA device.*use kernel.strategy"):
        selection.step(*_probe(_problem(), sgd(INNER_LR)), 0.2)


def _fake_compiled(monkeypatch: pytest.MonkeyPatch, compiled: Callable[..., StepResult]) -> None:
    """Stand in for torch.compile (tens of seconds here) in ``select_meta_step``."""
    real = _select.make_meta_step

    def build(*args: object, strategy: str, **kwargs: object) -> Callable[..., StepResult]:
        if strategy not in COMPILED_STRATEGIES:
            return real(*args, strategy=strategy, **kwargs)  # type: ignore[arg-type]
        eager = real(*args, strategy="batched", **kwargs)  # type: ignore[arg-type]
        return functools.partial(compiled, eager)

    monkeypatch.setattr(_select, "make_meta_step", build)


def _same(eager: Callable[..., StepResult], *args: object) -> StepResult:
    return eager(*args)


def test_auto_compiles_long_runs_when_the_probe_agrees(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_compiled(monkeypatch, _same)
    timed = _timings(monkeypatch, loop=6.0, batched=1.0, compiled=0.2)
    selection = _choose("auto", LONG)
    assert selection.strategy == "compiled"
    assert timed == ["loop", "batched", "compiled"]  # the CPU twin of batched; no cudagraphs
    assert "compiled matches the loop on the probe" in selection.reason
    assert selection.timings == {"loop": 6.0, "batched": 1.0, "compiled": 0.2}


def test_auto_compiles_the_loop_when_the_loop_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    # Convolutions on a CPU: the per-task structure stays, compiled.
    _fake_compiled(monkeypatch, _same)
    timed = _timings(monkeypatch, loop=1.0, batched=2.3, compiled_split=0.6, compiled_loop=0.55)
    selection = _choose("auto", LONG)
    assert selection.strategy == "compiled-loop"
    assert timed == ["loop", "batched", "compiled-split", "compiled-loop"]
    assert "compiled-split 600 ms, compiled-loop 550 ms" in selection.reason
    _check_runs_right(selection)


def test_auto_does_not_compile_for_a_short_time_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_compiled(monkeypatch, _same)
    timed = _timings(monkeypatch, loop=6.0, batched=1.0, compiled=0.2)
    selection = _choose("auto", 60_000, time_left=100.0)  # 100 steps of 1 s: too few
    assert selection.strategy == "batched" and "100 iterations" in selection.reason
    assert "compiled" not in timed


def test_auto_is_never_slower_than_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_compiled(monkeypatch, _same)
    _timings(monkeypatch, loop=1.0, batched=2.0, compiled_split=1.2, compiled_loop=1.5)
    selection = _choose("auto", LONG)
    assert selection.strategy == "loop" and "compiling does not pay" in selection.reason


def test_probe_judges_agreement_against_the_whole_gradient() -> None:
    # A gradient that is zero in exact arithmetic (a conv bias under batch norm) carries only
    # rounding noise: tiny next to the largest entry, it is not a disagreement (seen with conv-4
    # in float32, where a per-tensor check rejected a correct compiled kernel).
    big = torch.tensor([100.0])
    assert _select._close({"w": big, "b": torch.tensor([5e-3])}, {"w": big, "b": torch.zeros(1)})
    assert not _select._close({"w": torch.tensor([100.5])}, {"w": big})
    assert not _select._close({"w": big, "b": torch.tensor([0.5])}, {"w": big, "b": torch.zeros(1)})
    # float64 is held to rounding of float64
    big64 = big.double()
    assert not _select._close({"w": big64 + 1e-5}, {"w": big64})


def test_auto_skips_a_compile_that_is_slower(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_compiled(monkeypatch, _same)
    _timings(monkeypatch, loop=6.0, batched=1.0, compiled=1.5)
    selection = _choose("auto", LONG)
    assert selection.strategy == "batched" and "compiling does not pay" in selection.reason


def test_auto_falls_back_when_compile_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(eager: Callable[..., StepResult], *args: object) -> StepResult:
        raise RuntimeError("inductor: no C++ compiler\nsecond line")

    _fake_compiled(monkeypatch, broken)
    _timings(monkeypatch, loop=6.0, batched=1.0)
    selection = _choose("auto", LONG)
    assert selection.strategy == "batched"
    assert "compiled failed (RuntimeError: inductor: no C++ compiler)" in selection.reason
    assert "second line" not in selection.reason  # one line for the log and the run summary


def test_auto_falls_back_when_compiled_disagrees(monkeypatch: pytest.MonkeyPatch) -> None:
    def wrong(eager: Callable[..., StepResult], *args: object) -> StepResult:
        r = eager(*args)
        return StepResult(r.loss, {k: v * 1.01 for k, v in r.grads.items()}, r.learnable_grads)

    _fake_compiled(monkeypatch, wrong)
    _timings(monkeypatch, loop=6.0, batched=1.0, compiled=0.1)
    selection = _choose("auto", LONG)
    assert selection.strategy == "batched"
    assert "compiled meta-gradient disagrees with the loop" in selection.reason


def _off_in(dtypes: tuple[torch.dtype, ...], seen: list[torch.dtype]) -> Callable[..., StepResult]:
    """A compiled kernel whose meta-gradient is 1% off in ``dtypes``, right otherwise; ``seen``
    collects the dtype of every call."""

    def kernel(eager: Callable[..., StepResult], *args: object) -> StepResult:
        r = eager(*args)
        dtype = next(iter(r.grads.values())).dtype
        seen.append(dtype)
        if dtype not in dtypes:
            return r
        return StepResult(r.loss, {k: v * 1.01 for k, v in r.grads.items()}, r.learnable_grads)

    return kernel


@pytest.mark.parametrize(
    ("off_in", "float32_decides", "kept"),
    [
        # float32 cannot decide (the loop itself is that far off in float32): float64 does.
        ((torch.float32,), False, True),
        ((torch.float32, torch.float64), False, False),
        # float32 decides: a float32 disagreement is the kernel's, no float64 compile is tried.
        ((torch.float32,), True, False),
    ],
)
def test_auto_checks_a_compiled_kernel_in_float64_where_float32_cannot_decide(
    monkeypatch: pytest.MonkeyPatch,
    off_in: tuple[torch.dtype, ...],
    float32_decides: bool,
    kept: bool,
) -> None:
    seen: list[torch.dtype] = []
    _fake_compiled(monkeypatch, _off_in(off_in, seen))
    _timings(monkeypatch, loop=6.0, batched=1.0, compiled=0.1)
    monkeypatch.setattr(_select._Candidates, "_float32_decides", lambda self: float32_decides)
    selection = _choose("auto", LONG, dtype=torch.float32)  # a float32 run, as most are
    assert selection.strategy == ("compiled" if kept else "batched"), selection.reason
    assert (torch.float64 in seen) == (not float32_decides)  # the second compile, if needed


def test_auto_drops_a_batched_kernel_that_disagrees_with_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = _select.make_meta_step

    def build(*args: object, strategy: str, **kwargs: object) -> Callable[..., StepResult]:
        step = real(*args, strategy=strategy, **kwargs)  # type: ignore[arg-type]
        if strategy != "batched":
            return step

        def wrong(*a: object) -> StepResult:
            r = step(*a)  # type: ignore[arg-type]
            return StepResult(r.loss, {k: -v for k, v in r.grads.items()}, r.learnable_grads)

        return wrong

    monkeypatch.setattr(_select, "make_meta_step", build)
    timed = _timings(monkeypatch, loop=6.0, batched=1.0)
    selection = _choose("auto", 10)
    assert selection.strategy == "loop"
    assert "batched meta-gradient disagrees with the loop" in selection.reason
    assert timed == ["loop"]  # a wrong kernel is not even timed


def test_auto_measures_once_per_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_compiled(monkeypatch, _same)
    timed = _timings(monkeypatch, loop=6.0, batched=1.0, compiled=0.2)
    first = _choose("auto", LONG, signature="mlp-a")
    assert timed == ["loop", "batched", "compiled"]
    again = _choose("auto", LONG, signature="mlp-a")
    assert timed == ["loop", "batched", "compiled"]  # nothing measured the second time
    assert again.strategy == first.strategy == "compiled"
    assert again.reason == f"cached: {first.reason}"
    _check_runs_right(again)
    # A short run with the same signature reuses the eager timings and skips the compile ...
    short = _choose("auto", 10, signature="mlp-a")
    assert short.strategy == "batched" and timed == ["loop", "batched", "compiled"]
    # ... and another signature, or none, measures afresh.
    _choose("auto", 10, signature="mlp-b")
    _choose("auto", 10)
    assert timed[3:] == ["loop", "batched", "loop", "batched"]


# ------------------------------------------------------------------- compile cache hygiene


@pytest.mark.slow
def test_each_compiled_step_gets_its_own_compile(fresh_compiler: Callable[[], int]) -> None:
    # recompile_limit is 8 by default; 1 shows the same thing with two cheap builds.
    problem = _problem(torch.float32, hidden=(3,), num_tasks=2)
    with torch._dynamo.config.patch(recompile_limit=1):
        for lr in (0.01, 0.02):
            _run(problem, sgd(lr), "compiled", steps=1, first_order=True, scale=0.5)
    assert fresh_compiler() == 2


@pytest.mark.slow
def test_a_new_scale_does_not_recompile(fresh_compiler: Callable[[], int]) -> None:
    # Uneven shards across processes give each rank its own scale; none may cost a recompile.
    problem = _problem(torch.float32, hidden=(3,), num_tasks=2)
    step = make_meta_step(
        problem.objective, sgd(0.01), steps=1, first_order=True, strategy="compiled"
    )
    batch = problem.batch
    half = step(problem.params, {}, batch.support, batch.query, 0.5)
    quarter = step(problem.params, {}, batch.support, batch.query, 0.25)
    assert fresh_compiler() == 1
    for k in half.grads:
        torch.testing.assert_close(quarter.grads[k], half.grads[k] / 2)


# ------------------------------------------------------------------------------- autocast


@pytest.mark.parametrize("strategy", ["loop", "batched"])
def test_bfloat16_autocast_changes_the_numerics_only_to_its_precision(strategy: str) -> None:
    problem = _problem(torch.float32)
    exact = _run(problem, sgd(INNER_LR), "loop", steps=1, first_order=False)
    step = make_meta_step(
        problem.objective,
        sgd(INNER_LR),
        steps=1,
        first_order=False,
        strategy=strategy,  # type: ignore[arg-type]
        autocast=torch.bfloat16,
    )
    batch = problem.batch
    fast = step(problem.params, {}, batch.support, batch.query, 1 / META_BATCH)
    assert fast.loss.dtype == torch.float32
    assert all(g.dtype == torch.float32 for g in fast.grads.values())
    err = _rel_diff(fast.grads, exact.grads)
    assert 1e-5 < err < 5e-2  # bfloat16 really ran (8 significant bits), and stayed close


def test_auto_under_autocast_checks_parity_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    checked: list[tuple[str, object]] = []
    real = _select.make_meta_step

    def build(*args: object, strategy: str, autocast: object = None, **kw: object) -> object:
        checked.append((strategy, autocast))
        return real(*args, strategy=strategy, autocast=autocast, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(_select, "make_meta_step", build)
    _timings(monkeypatch, loop=6.0, batched=1.0)
    problem, adapter = _problem(torch.float32), sgd(INNER_LR)
    selection = select_meta_step(
        "auto",
        problem.objective,
        adapter,
        steps=1,
        first_order=False,
        remaining_iterations=10,
        probe=(problem.params, {}, problem.batch.support, problem.batch.query),
        autocast=torch.bfloat16,
    )
    assert selection.strategy == "batched"
    # each candidate built twice: exact for the parity check, under autocast to run
    assert checked == [
        ("loop", torch.bfloat16),
        ("loop", None),
        ("batched", torch.bfloat16),
        ("batched", None),
    ]


def test_auto_keeps_the_loop_when_its_choice_loses_to_the_loop_interleaved(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Timed alone, batched looked 6x faster; timed in turns with the loop (what a machine whose
    # load comes and goes can do to single measurements), it is slower.
    _timings(monkeypatch, loop=6.0, batched=1.0)
    rounds = iter([2.0, 1.0] * 3)  # batched, loop, batched, loop, ...
    monkeypatch.setattr(_select, "_time_once", lambda *_: next(rounds))
    selection = _choose("auto", 10)
    assert selection.strategy == "loop"
    assert "interleaved with the loop batched took 2e+03 ms against 1e+03 ms: loop" in (
        selection.reason
    )
