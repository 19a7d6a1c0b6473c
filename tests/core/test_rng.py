"""Counter-based random numbers: the tensor kernel against its plain-Python twin, and its promises.

Task sampling relies on ``uniform`` being a pure function of ``(key, task index, element)``:
bit-identical to ``uniform_reference`` (the oracle other-language kernels also match), each row
independent of the other rows, and reasonably uniform.
"""

from __future__ import annotations

import pytest
import torch

from mamlflow.core.rng import (
    choice,
    choice_reference,
    derive_key,
    integers,
    integers_reference,
    normal,
    normal_reference,
    permutation,
    permutation_reference,
    uniform,
    uniform_reference,
)

KEYS = [0, 1, derive_key(0), derive_key(42, 0, 7, 1), (1 << 64) - 1, 0x8000_0000_0000_0000]
# Small, negative, around 2**31 and 2**32 (where a 32-bit hash would wrap) and the int64 limits.
TASKS = [0, 1, 2, 24, -1, -2, -12_345, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**32 + 7]
TASKS += [2**40 + 3, 2**62, 2**63 - 1, -(2**63)]
DTYPES = [
    pytest.param(torch.float64, 53, id="float64"),
    pytest.param(torch.float32, 24, id="float32"),
]


@pytest.mark.parametrize(("dtype", "bits"), DTYPES)
@pytest.mark.parametrize("key", KEYS, ids=hex)
def test_uniform_matches_reference_bit_for_bit(key: int, dtype: torch.dtype, bits: int) -> None:
    count = 9
    values = uniform(key, torch.tensor(TASKS), count, dtype=dtype)
    assert values.shape == (len(TASKS), count) and values.dtype == dtype
    expected = torch.tensor([uniform_reference(key, t, count, bits) for t in TASKS], dtype=dtype)
    # Every reference value is a multiple of 2**-bits below 1, so it is exact in ``dtype``.
    assert torch.equal(values, expected)


@pytest.mark.parametrize(("dtype", "bits"), DTYPES)
def test_values_lie_in_unit_interval(dtype: torch.dtype, bits: int) -> None:
    values = uniform(derive_key(3), torch.arange(-500, 500), 200, dtype=dtype)
    assert values.min() >= 0 and values.max() < 1
    # Values are multiples of 2**-bits, the dtype's resolution, so none can round up to 1.0.
    assert torch.equal(values * 2**bits, (values * 2**bits).floor())


def test_a_row_depends_only_on_its_task_index() -> None:
    key = derive_key(7, 0, 11)
    alone = uniform(key, torch.tensor([3]), 5)
    assert torch.equal(alone[0], uniform(key, torch.tensor([1, 2, 3]), 5)[2])
    assert torch.equal(alone[0], uniform(key, torch.tensor([3, 3, 9]), 5)[1])
    shuffled = torch.tensor([4, 0, 3, 1, 2])
    assert torch.equal(uniform(key, torch.arange(5), 5)[shuffled], uniform(key, shuffled, 5))


def test_a_column_depends_only_on_its_element_index() -> None:
    key = derive_key(7, 0, 11)
    tasks = torch.arange(10)
    assert torch.equal(uniform(key, tasks, 4), uniform(key, tasks, 12)[:, :4])


def test_task_index_accepts_any_integer_shape_and_dtype() -> None:
    key = derive_key(5)
    flat = uniform(key, torch.arange(6), 3)
    assert torch.equal(uniform(key, torch.arange(6, dtype=torch.int32).reshape(2, 3), 3), flat)
    assert uniform(key, torch.tensor([], dtype=torch.int64), 3).shape == (0, 3)


def test_different_keys_tasks_and_elements_differ() -> None:
    tasks = torch.arange(100)
    a = uniform(derive_key(0, 0, 0), tasks, 10, dtype=torch.float64)
    b = uniform(derive_key(0, 0, 1), tasks, 10, dtype=torch.float64)
    assert (a != b).all()
    # No two numbers in a block coincide: rows and columns are not shifted copies.
    assert a.unique().numel() == a.numel()


def test_derive_key_is_order_sensitive_and_in_range() -> None:
    assert derive_key(1, 2, 3) == derive_key(1, 2, 3)
    keys = {derive_key(1, 2, 3), derive_key(3, 2, 1), derive_key(1, 2), derive_key(1, 2, 3, 0)}
    assert len(keys) == 4
    assert all(0 <= k < 2**64 for k in keys)
    assert derive_key(-1) == derive_key(2**64 - 1)  # negative parts are taken modulo 2**64


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_rough_uniformity(dtype: torch.dtype) -> None:
    values = uniform(derive_key(2024), torch.arange(1_000), 100, dtype=dtype).double()
    n = values.numel()
    # Standard errors for 1e5 draws: mean 9e-4, variance 2.4e-4; allow about 5 of them.
    assert abs(values.mean().item() - 0.5) < 5e-3
    assert abs(values.var().item() - 1 / 12) < 1.5e-3
    counts = torch.histc(values, bins=10, min=0, max=1)
    assert ((counts - n / 10).abs() < 0.05 * n / 10).all()  # every decile within 5 %
    # Neighbouring elements are uncorrelated.
    lag = torch.corrcoef(torch.stack([values[:, :-1].reshape(-1), values[:, 1:].reshape(-1)]))
    assert abs(lag[0, 1].item()) < 0.02


def test_standard_normal_is_keyed_and_normal() -> None:
    z = normal(11, torch.arange(4), 50_000, torch.float64)
    assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 1) < 0.02
    torch.testing.assert_close(normal(11, torch.tensor([2, 3]), 50_000, torch.float64), z[2:])
    assert not torch.equal(normal(12, torch.arange(4), 10, torch.float64), z[:, :10])


# -- the helpers task families draw from: each against its plain-Python twin ------------------


@pytest.mark.parametrize("key", KEYS[:4], ids=hex)
def test_normal_integers_permutation_choice_match_their_twins(key: int) -> None:
    tasks = torch.tensor(TASKS)
    z = normal(key, tasks, 7, torch.float64)
    ints, perms = integers(key, tasks, 11, 1000), permutation(key, tasks, 13)
    picks = choice(key, tasks, 13, 5)
    for row, task in enumerate(TASKS):
        expected = torch.tensor(normal_reference(key, task, 7), dtype=torch.float64)
        torch.testing.assert_close(z[row], expected, rtol=1e-14, atol=1e-14)
        assert ints[row].tolist() == integers_reference(key, task, 11, 1000)
        assert perms[row].tolist() == permutation_reference(key, task, 13)
        assert picks[row].tolist() == choice_reference(key, task, 13, 5)
    assert ints.dtype == perms.dtype == picks.dtype == torch.int64


def test_permutations_are_permutations_and_rows_independent() -> None:
    perms = permutation(5, torch.arange(200), 10)
    assert torch.equal(perms.sort(1).values, torch.arange(10).expand(200, 10))
    # A row depends on its task index only, not on the other rows asked for.
    assert torch.equal(permutation(5, torch.tensor([150, 3]), 10), perms[[150, 3]])
    # Every position takes every value about equally often (200 rows, 10 values: ~20 each).
    counts = torch.stack([(perms[:, j : j + 1] == torch.arange(10)).sum(0) for j in range(10)])
    assert int(counts.min()) >= 5 and int(counts.max()) <= 40
    picks = choice(5, torch.arange(200), 10, 3)
    assert torch.equal(picks, perms[:, :3])
    ints = integers(5, torch.arange(2000), 1, 7)
    assert set(ints.flatten().tolist()) == set(range(7))


def test_impossible_draws_are_errors() -> None:
    tasks = torch.arange(2)
    with pytest.raises(ValueError, match=r"high must be in \[1, 2\*\*32\], got 0"):
        integers(0, tasks, 1, 0)
    with pytest.raises(ValueError, match=r"cannot choose 4 distinct values of range\(3\)"):
        choice(0, tasks, 3, 4)
    with pytest.raises(ValueError, match=r"n must be in \[1, 2\*\*32\]"):
        permutation(0, tasks, 2**33)
