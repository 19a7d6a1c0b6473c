"""The public API is an explicit list; changing it is a deliberate act that updates this test."""

from __future__ import annotations

from typing import Any, get_origin

import mamlflow
import mamlflow.nn
import mamlflow.rng

# Running and embedding meta-learning.
USERS = {
    "Checkpoint", "CheckpointError", "Components", "ConfigError", "DataError", "EvalResult",
    "MamlflowError", "PluginError", "PluginHost", "ResolvedConfig", "RunConfig", "RunDir",
    "Trainer", "TrainSummary", "UnknownNameError", "build_components", "evaluate", "get_host",
    "load_checkpoint", "load_saved", "make_adapt", "make_meta_step", "resolve",
    "AdaptedModel", "MetaModel", "load_adapted", "load_run",
}  # fmt: skip
# Writing plugins: the contracts, and the types they take and return.
PLUGIN_AUTHORS = {
    "SPLITS", "STRATEGIES", "Adapter", "AdapterState", "Algorithm", "AlgorithmConfig",
    "Callback", "CallbackConfig", "InnerConfig", "Learner", "LossAndKL", "MetaStep",
    "MetaStepFactory", "Metric", "MetricsRecord", "ModelConfig", "ModelIO", "ModelPlugin",
    "OuterConfig", "OuterOptimizer", "OuterStepReport", "Params", "Policy", "PolicyGradient",
    "PolicyOuterOptimizer", "PolicyTerms", "Preset", "RolloutConfig", "RolloutTaskFamily",
    "Split", "StagedObjective", "StepResult", "Strategy", "TaskBatch", "TaskConfig",
    "TaskFamily", "TaskObjective", "TrainStart", "TrainerControl", "adam", "apply_updates",
    "chain", "hookimpl", "nn", "rng", "sgd", "ImageInputs",
}  # fmt: skip
NN = {
    "BatchNorm", "BatchStatistics", "GroupNorm", "LayerNorm", "batch_statistics_layers",
    "statistics_from_first", "vmap_unsafe_layers",
}  # fmt: skip
RNG = {
    "choice", "choice_reference", "derive_key", "integers", "integers_reference", "mix64",
    "normal", "normal_reference", "permutation", "permutation_reference", "uniform",
    "uniform_reference",
}  # fmt: skip


def test_public_api_is_explicit() -> None:
    assert set(mamlflow.__all__) == USERS | PLUGIN_AUTHORS
    assert len(mamlflow.__all__) == len(USERS | PLUGIN_AUTHORS)
    for name in mamlflow.__all__:
        assert getattr(mamlflow, name) is not None, name


def test_rng_helpers_are_public() -> None:
    assert set(mamlflow.rng.__all__) == RNG
    assert mamlflow.rng is mamlflow.__dict__["rng"]
    for name in RNG:
        assert callable(getattr(mamlflow.rng, name)), name


def test_vmap_safe_layers_are_public() -> None:
    assert set(mamlflow.nn.__all__) == NN
    assert mamlflow.nn is mamlflow.__dict__["nn"]
    for name in NN:
        assert (getattr(mamlflow.nn, name).__doc__ or "").strip(), name


def test_public_names_are_documented() -> None:
    for name in mamlflow.__all__:
        obj = getattr(mamlflow, name)
        if isinstance(obj, (dict, tuple)) or get_origin(obj) is not None or obj is Any:
            continue  # constants and type aliases: documented where they are defined
        assert (obj.__doc__ or "").strip(), f"mamlflow.{name} has no docstring"
