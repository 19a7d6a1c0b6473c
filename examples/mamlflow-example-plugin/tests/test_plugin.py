"""The example plugin keeps mamlflow's contracts (mamlflow.testing) and learns its tasks."""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

import mamlflow
import torch
from mamlflow.testing import check_model, check_preset, check_task_family

from mamlflow_example_plugin.fourier_mlp import FourierMLP, FourierMLPConfig
from mamlflow_example_plugin.polynomial import Polynomial, PolynomialConfig


def test_polynomial_keeps_the_task_family_contract() -> None:
    check_task_family(Polynomial)
    check_task_family(Polynomial(PolynomialConfig(name="polynomial", degree=0, shots=1)))


def test_fourier_mlp_keeps_the_model_contract() -> None:
    check_model(FourierMLP, Polynomial)
    check_model(FourierMLP(FourierMLPConfig(name="fourier-mlp", hidden=())), Polynomial)


def test_polynomial_targets_are_the_polynomial_of_the_inputs() -> None:
    family = Polynomial(PolynomialConfig(name="polynomial", degree=2))
    batch = family.sample(0, 0, torch.arange(3))
    c = batch.info["coefficients"]
    x = batch.support["x"][..., 0]
    expected = c[:, :1] + c[:, 1:2] * x + c[:, 2:3] * x**2
    torch.testing.assert_close(batch.support["y"][..., 0], expected)


def test_the_plugin_registers_everything(mamlflow_host: mamlflow.PluginHost) -> None:
    assert mamlflow_host.task_family("polynomial") is Polynomial
    assert mamlflow_host.model("fourier-mlp") is FourierMLP
    assert mamlflow_host.preset("polynomial").values["task"]["name"] == "polynomial"


def test_the_preset_resolves_trains_and_evaluates(mamlflow_host: mamlflow.PluginHost) -> None:
    check_preset(mamlflow_host, "polynomial")


def test_the_preset_learns_polynomials(mamlflow_host: mamlflow.PluginHost, tmp_path: Path) -> None:
    sets = ["train.iterations=300", "kernel.strategy=batched"]
    config = mamlflow.resolve(mamlflow_host, preset="polynomial", sets=sets).config
    trainer = mamlflow.Trainer(config, tmp_path, mamlflow_host)
    trainer.fit()
    checkpoint = mamlflow.load_checkpoint(tmp_path)
    result, _ = mamlflow.evaluate(
        trainer.components, checkpoint.params, checkpoint.learnables, shots=10, steps=1, tasks=200
    )
    before, after = result.mean
    # Predicting 0 costs about 0.56; one step from the meta-learned init fits much of a task.
    assert after < 0.5 * before, result.mean


def test_the_installed_package_exposes_the_entry_point() -> None:
    found = [ep for ep in entry_points(group="mamlflow") if ep.name == "example"]
    assert len(found) == 1, "install the package first: pip install -e . (from its folder)"
    (entry,) = found
    assert entry.value == "mamlflow_example_plugin.plugin"
    assert entry.dist is not None and entry.dist.name == "mamlflow-example-plugin"
