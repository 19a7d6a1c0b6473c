"""The contracts' own behaviour: how a family picks its batch source, and the two outer steps."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch

from mamlflow.core import (
    ConfigError,
    OuterConfig,
    OuterOptimizer,
    OuterStepReport,
    PolicyOuterOptimizer,
    PolicyTerms,
    RolloutTaskFamily,
    TaskFamily,
)
from mamlflow.engine import PluginHost


class _Recorder:
    """A ``BatchSources`` that says which kind it was asked for."""

    def sampled(self, family: TaskFamily) -> str:
        return f"sampled {family.name}"

    def rollouts(self, family: RolloutTaskFamily) -> str:
        return f"rollouts {family.name}"


@pytest.fixture(scope="module")
def host() -> PluginHost:
    return PluginHost(autoload=False)


def _family(host: PluginHost, name: str) -> TaskFamily:
    cls = host.task_family(name)
    return cls(cls.Config(name=name))


def test_a_family_chooses_its_batch_source_by_what_it_is(host: PluginHost) -> None:
    assert _family(host, "sinusoid").batch_source(_Recorder()) == "sampled sinusoid"
    assert _family(host, "navigation").batch_source(_Recorder()) == "rollouts navigation"


class _Sum(OuterOptimizer):
    name: ClassVar[str] = "sum"

    def build(self, params):  # type: ignore[no-untyped-def]
        return torch.optim.SGD(params, lr=self.config.lr)


class _Policy(PolicyOuterOptimizer):
    name: ClassVar[str] = "policy"

    def build(self, params):  # type: ignore[no-untyped-def]
        return torch.optim.SGD(params, lr=self.config.lr)

    def policy_step(self, optimizer: torch.optim.Optimizer, terms: PolicyTerms) -> OuterStepReport:
        return OuterStepReport(loss=terms.loss_kl().loss)


def test_a_gradient_optimizer_steps_on_the_grad_and_reports_nothing(host: PluginHost) -> None:
    outer = _Sum(OuterConfig(name="sum", lr=0.5))
    leaf = torch.ones(2, requires_grad=True)
    optimizer = outer.build([leaf])
    leaf.grad = torch.tensor([1.0, -2.0])
    assert outer.step(optimizer, None) == OuterStepReport()
    assert leaf.tolist() == [0.5, 2.0]
    assert outer.check_task_family(_family(host, "navigation")) is None


def test_a_policy_optimizer_needs_a_rollout_family_and_its_terms(host: PluginHost) -> None:
    outer = _Policy(OuterConfig(name="policy"))
    assert outer.check_task_family(_family(host, "navigation")) is None
    assert outer.check_task_family(_family(host, "sinusoid")) == (
        "policy re-evaluates a policy's meta-objective and needs a rollout task family (metric "
        "return), not 'sinusoid'; use adam"
    )
    optimizer = outer.build([torch.ones(1, requires_grad=True)])
    with pytest.raises(ConfigError, match="needs a rollout task family's PolicyTerms"):
        outer.step(optimizer, None)
