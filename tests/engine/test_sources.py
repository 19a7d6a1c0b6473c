"""Batch sources: each family's meta-batches come from the source it chooses, one interface."""

from __future__ import annotations

import pytest
import torch

from mamlflow.core import ConfigError
from mamlflow.engine import (
    CollectedRollouts,
    PluginHost,
    SampledTasks,
    build_components,
    resolve,
)
from tests.navigation import navigation_components


def test_a_supervised_family_trains_on_its_samples_as_they_are(host: PluginHost) -> None:
    config = resolve(host, preset="sinusoid", sets=("train.meta_batch_size=3",)).config
    c = build_components(config, host)
    assert isinstance(c.source, SampledTasks)
    params, learnables = c.initial_params()
    batch = c.family.sample(0, 0, torch.arange(3))
    assert c.source.meta_batch(batch, params, learnables, seed=0, iteration=0) is batch
    assert c.source.logged(batch, 1 / 3, torch.float32, torch.device("cpu")) is None
    assert c.source.record([]) == {}
    leaves = (params, learnables)
    terms = c.source.policy_terms(
        leaves, batch, meta_batch_size=3, first_order=False, reduce=lambda t: t
    )
    assert terms is None
    c.source.check_training(config)  # any inner loop trains a supervised family


def test_a_rollout_family_collects_support_with_theta_and_query_with_theta_prime(
    host: PluginHost,
) -> None:
    c = navigation_components(host)
    assert isinstance(c.source, CollectedRollouts)
    params, learnables = c.initial_params()
    sampled = c.family.sample(0, 0, torch.arange(2))
    assert not sampled.support and not sampled.query  # a rollout family samples goals only
    batch = c.source.meta_batch(sampled, params, learnables, seed=0, iteration=0)
    assert batch.support["obs"].shape[:2] == (2, c.config.task.shots)
    assert "old_logp" in batch.query and "old_logp" not in batch.support
    logged = c.source.logged(batch, 0.5, torch.float32, torch.device("cpu"))
    assert logged is not None and logged.shape == (2,)
    empty = c.source.logged(None, 0.5, torch.float32, torch.device("cpu"))
    assert empty is not None and torch.equal(empty, torch.zeros(2))
    assert c.source.record([-3.0, -1.0]) == {"return_before": -3.0, "return_after": -1.0}
    with pytest.raises(ConfigError, match=r"inner\.steps: 2, but rollout families train"):
        c.source.check_training(
            c.config.model_copy(update={"inner": c.config.inner.model_copy(update={"steps": 2})})
        )
