"""Evaluation reports what a mean hides: the median, and tasks that diverge or are not finite."""

from __future__ import annotations

import json

import pytest
import torch

from mamlflow.core import strict_json
from mamlflow.engine import DIVERGED, EvalExamples, EvalResult
from mamlflow.engine.evaluation import _summary


def _result(scores: list[list[float]], metric: str = "mse") -> EvalResult:
    table = torch.tensor(scores, dtype=torch.float64)
    examples = EvalExamples(None, {}, {})  # type: ignore[arg-type]
    result, _ = _summary(metric, 5, table.shape[1] - 1, table, examples)
    return result


def test_a_diverging_task_is_counted_and_the_median_shows_the_rest() -> None:
    scores = [[3.0, 0.5, 0.2], [2.0, 0.4, 0.1], [1.0, 5.0, float("inf")], [4.0, 0.3, 0.3]]
    result = _result(scores)
    assert result.nonfinite == [0, 0, 1]
    assert result.diverged == [0, 0, 1]  # 5.0 is under 10 x 1.0; inf is not finite
    assert result.median[1] == pytest.approx(0.4) and result.median[2] == pytest.approx(0.2)
    assert result.mean[2] == float("inf")
    (warning,) = result.warnings()
    assert warning.startswith("K=5: 1 of 4 tasks diverged from step 2 on") and "0.2" in warning


def test_an_mse_far_above_its_value_before_adaptation_has_diverged() -> None:
    result = _result([[1.0, DIVERGED * 1.0 + 1], [1.0, 0.5], [1.0, 0.4]])
    assert result.diverged == [0, 1] and result.nonfinite == [0, 0]
    assert _result([[0.2, 0.9], [0.3, 0.8]], metric="accuracy").diverged == [0, 0]
    assert _result([[0.5, 0.6], [0.5, 0.7]]).warnings() == []


def test_results_are_strict_json_with_nan_as_null() -> None:
    result = _result([[1.0, float("nan")], [2.0, 0.5]])
    text = strict_json(result.as_json())
    data = json.loads(text, parse_constant=lambda token: pytest.fail(f"non-strict {token}"))
    assert data["mean"][1] is None and data["nonfinite"] == [0, 1]
    assert data["median"][1] == pytest.approx(0.5)
