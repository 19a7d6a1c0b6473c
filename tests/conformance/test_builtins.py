"""Every registered built-in passes the ``mamlflow.testing`` check for its kind.

The names come from ``PluginHost(autoload=False)`` when the tests are collected, so a new
built-in is checked without editing this file. The tables below only keep the checks cheap (a
few short trajectories, a narrow conv4, a tiny meta-batch); a built-in without an entry is
checked with its ``Config``'s defaults.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from mamlflow.core import InnerConfig, TaskFamily
from mamlflow.engine import PluginHost
from mamlflow.plugins.fewshot import EXPECTED
from mamlflow.plugins.fewshot import FAMILIES as FEWSHOT_FAMILIES
from mamlflow.plugins.images import ImageFamily
from mamlflow.testing import (
    check_algorithm,
    check_callback,
    check_model,
    check_optimizer,
    check_preset,
    check_task_family,
)

from ..plugins.fewshot_fixtures import SmallSet, conformance_sets
from ..plugins.image_fixtures import write_classes

ROOT = Path(__file__).resolve().parents[2]
HOST = PluginHost(autoload=False)

Options = Mapping[str, Any]
Variants = tuple[tuple[Options, Options], ...]
"""``(config options, check keyword arguments)`` of each setting a component is checked in."""

FAMILY_VARIANTS: dict[str, Variants] = {
    # The paper's K=10, and the smallest K with the smallest batch the check splits.
    "sinusoid": (({}, {}), ({"shots": 1, "query": 1}, {"tasks": 4})),
    # A few short trajectories: what is checked is how they are collected, not how well.
    "navigation": (({"shots": 4, "query": 4, "horizon": 20}, {}),),
    "halfcheetah-vel": (({"shots": 2, "query": 2, "horizon": 10}, {"tasks": 4}),),
    "halfcheetah-dir": (({"shots": 2, "query": 2, "horizon": 10}, {"tasks": 4}),),
    # Small images and few queries: what is checked is the sampling, not the resolution.
    "imagefolder": (({"image_size": 16, "query": 2}, {}), ({"channels": 1, "rotations": True}, {})),
    # The few-shot sets likewise (one 16x16 cache each), normalised by the training split's
    # statistics (the default) and, as their presets train, only scaled; rotations too.
    **{
        family.name: (
            ({"image_size": 16, "query": 2}, {}),
            ({"image_size": 16, "query": 2, "normalize": "none", "rotations": True}, {}),
        )
        for family in FEWSHOT_FAMILIES
    },
}
MODEL_VARIANTS: dict[str, Variants] = {
    # conv4 at the paper's width takes seconds per float64 meta-step; both downsamplings.
    "conv4": (
        ({"filters": 8}, {"tasks": 2, "steps": 1}),
        ({"filters": 4, "downsample": "maxpool"}, {"tasks": 2}),
    ),
    # ResNet-12 at MetaOptNet's widths (64-640) costs minutes per float64 meta-gradient; the
    # check is about vmap safety and parity, which four narrow blocks show as well.
    "resnet12": (
        ({"channels": (4, 8, 8, 8)}, {"tasks": 2, "steps": 1}),
        ({"channels": (4, 8, 8, 8), "norm": "group", "groups": 2}, {"tasks": 2, "steps": 1}),
    ),
}
PRESET_SETS: dict[str, tuple[str, ...]] = {
    "navigation": (
        "train.meta_batch_size=2",
        "task.shots=2",
        "task.query=2",
        "task.horizon=10",
        "task.eval_timesteps=null",
        "eval.shots=[2]",
    ),
    "halfcheetah-vel": (
        "train.meta_batch_size=2",
        "task.shots=2",
        "task.query=2",
        "task.horizon=10",
        "eval.shots=[2]",
    ),
    "halfcheetah-dir": (
        "train.meta_batch_size=2",
        "task.shots=2",
        "task.query=2",
        "task.horizon=10",
        "eval.shots=[2]",
    ),
    "omniglot": ("train.meta_batch_size=2",),
    "imagefolder": ("train.meta_batch_size=2", "task.image_size=16", "task.query=2"),
    **{
        family.name: ("train.meta_batch_size=2", "task.image_size=16", "task.query=2")
        for family in FEWSHOT_FAMILIES
    },
}
"""Per task family (a preset's ``task.name``): ``--set`` items that check its presets small."""
PRESET_MODEL_SETS: dict[str, tuple[str, ...]] = {
    "conv4": ("model.filters=8",),
    "resnet12": ("model.channels=[4, 8, 8, 8]",),
}
"""Per model (a preset's ``model.name``): ``--set`` items that make it narrow."""


def _presets_values() -> dict[str, Mapping[str, Any]]:
    return {name: HOST.preset(name).values for name in HOST.names("preset")}


def _section(values: Mapping[str, Any], section: str) -> str | None:
    named = values.get(section)
    return named.get("name") if isinstance(named, Mapping) else None


def _model_pairs() -> list[tuple[str, str]]:
    """``(model, task family)`` of every preset: the families each model is meant for."""
    pairs = {(_section(v, "model"), _section(v, "task")) for v in _presets_values().values()}
    return sorted((m, t) for m, t in pairs if m is not None and t is not None)


def _omniglot_data() -> Path | None:
    """Where the Omniglot archives are: $MAMLFLOW_DATA/omniglot, else the shared data folder."""
    for root in (os.environ.get("MAMLFLOW_DATA"), ROOT.parent / "shared" / "data"):
        if root and (Path(root) / "omniglot" / "images_background.zip").exists():
            return Path(root) / "omniglot"
    return None


@pytest.fixture(scope="module")
def omniglot(tmp_path_factory: pytest.TempPathFactory) -> Options:
    """Omniglot's data options, with its 28x28 cache built here rather than in a timed check."""
    data = _omniglot_data()
    if data is None:
        pytest.skip("no Omniglot data: set MAMLFLOW_DATA to a folder holding omniglot/*.zip")
    options = {
        "data_dir": data,
        "cache_dir": tmp_path_factory.mktemp("omniglot-cache"),
        "download": False,
    }
    cls = HOST.task_family("omniglot")
    cls(cls.Config(name="omniglot", **options)).images  # noqa: B018 - builds the cache
    return options


@pytest.fixture(scope="module")
def imagefolder(tmp_path_factory: pytest.TempPathFactory) -> Options:
    """A generated folder of 15 classes x 16 small images, five classes per split."""
    root = tmp_path_factory.mktemp("imagefolder-data")
    write_classes(root, {f"class{i:02d}": 16 for i in range(15)})
    return {
        "data_dir": root,
        "cache_dir": tmp_path_factory.mktemp("imagefolder-cache"),
        "train_classes": 5,
        "val_classes": 5,
        "decode_workers": 1,
    }


@pytest.fixture(scope="session")
def fewshot_sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SmallSet]:
    """Each few-shot family's generated copy in its real layout (see ``conformance_sets``)."""
    return conformance_sets(tmp_path_factory.mktemp("fewshot-data"))


@pytest.fixture(scope="session")
def fewshot_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One image cache for the session: each family builds its 16x16 cache once."""
    return tmp_path_factory.mktemp("fewshot-cache")


def _fewshot_options(name: str) -> Callable[..., Options]:
    """The options fixture of few-shot family ``name``: its generated copy, with its counts."""

    def options(
        fewshot_sets: dict[str, SmallSet], fewshot_cache: Path, monkeypatch: pytest.MonkeyPatch
    ) -> Options:
        small = fewshot_sets[name]
        # A reader refuses a copy without the published counts (64 / 16 / 20 classes x 600
        # images for MiniImagenet, 779,165 images for tieredImagenet, ...), and no CI machine
        # holds the real sets (licensed ImageNet crops, gigabytes each, no download for two of
        # them). The table the readers look up is patched to the copy's counts for this test
        # only; the real counts are checked in tests/plugins/test_fewshot.py.
        monkeypatch.setitem(EXPECTED, name, small.expected)
        return {
            "data_dir": small.data_dir,
            "cache_dir": fewshot_cache,
            "decode_workers": 1,
            **small.options,
        }

    return pytest.fixture(name=f"{name}_data")(options)


miniimagenet_data = _fewshot_options("miniimagenet")
tieredimagenet_data = _fewshot_options("tieredimagenet")
cifar_fs_data = _fewshot_options("cifar-fs")
fc100_data = _fewshot_options("fc100")
cub_data = _fewshot_options("cub")


# Families that need data to exist before they can be built: the fixture giving their options.
# An image family (``mamlflow.plugins.images.ImageFamily``) needs one too, with generated files
# in its own layout; one without is skipped, saying so.
DATA_OPTIONS = {
    "omniglot": "omniglot",
    "imagefolder": "imagefolder",
    **{family.name: f"{family.name}_data" for family in FEWSHOT_FAMILIES},
}


def _data_options(name: str, request: pytest.FixtureRequest) -> Options:
    if name in DATA_OPTIONS:
        return request.getfixturevalue(DATA_OPTIONS[name])
    if issubclass(HOST.task_family(name), ImageFamily):
        # Built with its defaults it would look for real data and, on a machine without it,
        # fail for a reason that is not the family's: every image family brings generated data.
        pytest.fail(f"image family '{name}' has no generated data: add a fixture to DATA_OPTIONS")
    return {}


@pytest.fixture
def family(request: pytest.FixtureRequest) -> Callable[..., TaskFamily]:
    """``family(name, **options)``: the registered family, with its data options if it needs any."""

    def build(name: str, **options: Any) -> TaskFamily:
        options = {**_data_options(name, request), **options}
        cls = HOST.task_family(name)
        return cls(cls.Config(name=name, **options))

    return build


# -- one test per registered component ------------------------------------------------------------


@pytest.mark.parametrize("name", HOST.names("task_family"))
def test_task_family_conforms(name: str, family: Callable[..., TaskFamily]) -> None:
    for options, kwargs in FAMILY_VARIANTS.get(name, (({}, {}),)):
        check_task_family(family(name, **options), **kwargs)


@pytest.mark.parametrize(("name", "task"), _model_pairs(), ids=lambda p: p)
def test_model_conforms_on_the_families_its_presets_use(
    name: str, task: str, family: Callable[..., TaskFamily]
) -> None:
    cheap = FAMILY_VARIANTS.get(task, (({}, {}),))[0][0]
    cls = HOST.model(name)
    for options, kwargs in MODEL_VARIANTS.get(name, (({}, {}),)):
        check_model(cls(cls.Config(name=name, **options)), family(task, **cheap), **kwargs)


def test_every_model_is_paired_with_a_family() -> None:
    paired = {model for model, _ in _model_pairs()}
    missing = sorted(set(HOST.names("model")) - paired)
    assert not missing, f"models no preset uses, so check_model has no family for: {missing}"


def _inner_of_sinusoid_preset(algorithm: str) -> InnerConfig | None:
    """The inner loop of the algorithm's sinusoid preset, if it has one.

    Reptile with one inner step is joint training, not meta-learning (Nichol et al. 2018, §5):
    each algorithm is checked with the inner loop its own sinusoid preset trains with.
    """
    for values in _presets_values().values():
        if (_section(values, "task"), _section(values, "algorithm")) == ("sinusoid", algorithm):
            return InnerConfig(**values.get("inner", {}))
    return None


@pytest.mark.parametrize("name", HOST.names("algorithm"))
def test_algorithm_conforms(name: str) -> None:
    check_algorithm(HOST.algorithm(name), inner=_inner_of_sinusoid_preset(name))


@pytest.mark.parametrize("name", HOST.names("optimizer"))
def test_outer_optimizer_conforms(name: str) -> None:
    check_optimizer(HOST.optimizer(name))


@pytest.mark.parametrize("name", HOST.names("callback"))
def test_callback_conforms(name: str) -> None:
    check_callback(HOST.callback(name))


@pytest.mark.parametrize("name", HOST.names("preset"))
def test_preset_conforms(name: str, request: pytest.FixtureRequest) -> None:
    values = HOST.preset(name).values
    task, model = _section(values, "task") or "", _section(values, "model") or ""
    sets = [*PRESET_SETS.get(task, ()), *PRESET_MODEL_SETS.get(model, ())]
    if task:
        sets += [f"task.{key}={value}" for key, value in _data_options(task, request).items()]
    check_preset(HOST, name, iterations=2, tasks=4, sets=sets)
