"""The public API is an explicit list; changing it is a deliberate act that updates this test."""

from __future__ import annotations

import mamlflow

EXPECTED = {
    "Adapter", "Algorithm", "AlgorithmConfig", "Callback", "Checkpoint", "CheckpointError",
    "Components", "ConfigError", "DataError", "EvalResult", "MamlflowError", "ModelConfig",
    "ModelIO", "ModelPlugin", "OuterConfig", "OuterOptimizer", "PluginError", "PluginHost",
    "Preset", "ResolvedConfig", "RolloutConfig", "RolloutTaskFamily", "RunConfig", "TaskBatch",
    "TaskConfig", "TaskFamily", "Trainer",
    "UnknownNameError", "adam", "apply_updates", "build_components", "chain", "evaluate",
    "get_host", "hookimpl", "load_checkpoint", "make_adapt", "make_meta_step", "resolve", "sgd",
}  # fmt: skip


def test_public_api_is_explicit() -> None:
    assert set(mamlflow.__all__) == EXPECTED
    assert len(mamlflow.__all__) == len(EXPECTED)
    for name in mamlflow.__all__:
        assert getattr(mamlflow, name) is not None, name


def test_public_names_are_documented() -> None:
    for name in mamlflow.__all__:
        obj = getattr(mamlflow, name)
        assert (obj.__doc__ or "").strip(), f"mamlflow.{name} has no docstring"
