"""The config schema refuses what a later library call would choke on, in one line each."""

from __future__ import annotations

import pytest
from pydantic import Field, ValidationError

from mamlflow.core import ConfigError, InnerConfig, PluginConfig, RunConfig, TrainConfig


class _Options(PluginConfig):
    rate: float = 0.1
    count: int = 3
    sizes: tuple[int, ...] = (1, 2)
    flag: bool = False
    limit: float | None = Field(None, gt=0)


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_floats_must_be_finite(value: float) -> None:
    with pytest.raises(ValidationError, match="finite number"):
        InnerConfig(lr=value)
    with pytest.raises(ValidationError, match="finite number"):
        TrainConfig(time_limit=value)
    with pytest.raises(ValidationError, match="finite number"):
        _Options(name="x", limit=value)


@pytest.mark.parametrize(
    "options", [{"count": True}, {"rate": False}, {"sizes": [4, True]}, {"limit": True}]
)
def test_true_and_false_are_not_numbers(options: dict[str, object]) -> None:
    with pytest.raises(ValidationError, match="not true or false"):
        _Options(name="x", **options)
    with pytest.raises(ValidationError, match="not true or false"):
        TrainConfig(iterations=True)


def test_booleans_still_are_booleans_and_numbers_numbers() -> None:
    options = _Options(name="x", flag=True, count=5, rate=2, sizes=[3])
    assert options.flag is True and options.count == 5 and options.rate == 2.0


@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1])
def test_a_seed_fits_in_64_bits(seed: int) -> None:
    base = {"task": {"name": "t"}, "model": {"name": "m"}, "algorithm": {"name": "a"}}
    with pytest.raises(ValidationError, match="seed"):
        RunConfig.model_validate({**base, "outer": {"name": "o"}, "seed": seed})


def test_a_config_error_takes_one_line_or_several() -> None:
    assert ConfigError("task.ways: at most 20").issues == ["task.ways: at most 20"]
    assert str(ConfigError("one line")) == "one line"
    assert ConfigError(["a: x", "b: y"]).issues == ["a: x", "b: y"]
