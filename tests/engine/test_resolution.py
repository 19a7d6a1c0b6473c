"""Config resolution: precedence, provenance, file formats, one-line errors, saving and loading.

Runs against small test plugins on a host without built-ins, so it does not depend on which
components mamlflow ships.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import Field, ValidationError

from mamlflow.core import (
    Algorithm,
    AlgorithmConfig,
    CheckpointError,
    ConfigError,
    ModelConfig,
    ModelPlugin,
    OuterConfig,
    OuterOptimizer,
    Preset,
    TaskConfig,
    TaskFamily,
    UnknownNameError,
    hookimpl,
)
from mamlflow.engine import (
    ConfigField,
    PluginHost,
    ResolvedConfig,
    config_schema,
    load_config_file,
    load_saved,
    parse_set,
    resolve,
    save_resolved,
)

# --- test plugins ------------------------------------------------------------------------------


class WaveConfig(TaskConfig):
    amplitude: tuple[float, float] = Field((0.1, 5.0), description="amplitude range")
    noise: float = Field(0.0, ge=0, description="label noise")


class Wave(TaskFamily):
    name = "wave"
    Config = WaveConfig
    metric = "mse"

    io = None  # type: ignore[assignment]  # never sampled here

    def sample(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def objective(self, model):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def score(self, model):  # type: ignore[no-untyped-def]
        raise NotImplementedError


class NetConfig(ModelConfig):
    hidden: tuple[int, ...] = Field((40, 40), description="hidden layer widths")


class Net(ModelPlugin):
    name = "net"
    Config = NetConfig

    def build(self, io):  # type: ignore[no-untyped-def]
        raise NotImplementedError


class Meta(Algorithm):
    name = "meta"
    Config = AlgorithmConfig

    def adapter(self, inner):  # type: ignore[no-untyped-def]
        raise NotImplementedError


class StepConfig(OuterConfig):
    betas: tuple[float, float] = Field((0.9, 0.999), description="moment decay rates")


class Step(OuterOptimizer):
    name = "step"
    Config = StepConfig

    def build(self, params):  # type: ignore[no-untyped-def]
        raise NotImplementedError


WAVE_PRESET = Preset(
    "wave",
    "a small regression run",
    {
        "task": {"name": "wave", "shots": 5, "noise": 0.1},
        "model": {"name": "net"},
        "algorithm": {"name": "meta"},
        "outer": {"name": "step"},
        "inner": {"lr": 0.01, "steps": 1},
        "train": {"iterations": 100},
    },
)


@hookimpl
def register_task_families(register):  # type: ignore[no-untyped-def]
    register(Wave)


@hookimpl
def register_models(register):  # type: ignore[no-untyped-def]
    register(Net)


@hookimpl
def register_algorithms(register):  # type: ignore[no-untyped-def]
    register(Meta)


@hookimpl
def register_optimizers(register):  # type: ignore[no-untyped-def]
    register(Step)


@hookimpl
def register_presets(register):  # type: ignore[no-untyped-def]
    register(WAVE_PRESET)


PLUGINS = SimpleNamespace(
    register_task_families=register_task_families,
    register_models=register_models,
    register_algorithms=register_algorithms,
    register_optimizers=register_optimizers,
    register_presets=register_presets,
)


@pytest.fixture
def host() -> Iterator[PluginHost]:
    host = PluginHost(builtins=(), autoload=False)
    undo = host.add_plugin(PLUGINS, "config-test")
    yield host
    undo()


def issues_of(excinfo: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return excinfo.value.issues


# --- parse_set ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("inner.lr=0.4", ("inner.lr", 0.4)),
        ("outer.lr=1e-3", ("outer.lr", 1e-3)),
        ("inner.first_order=true", ("inner.first_order", True)),
        ("eval.shots=[5, 10]", ("eval.shots", [5, 10])),
        ("train.time_limit=null", ("train.time_limit", None)),
        ("device=cuda:0", ("device", "cuda:0")),
        ("task.name=wave", ("task.name", "wave")),
        ("task={name: wave, shots: 3}", ("task", {"name": "wave", "shots": 3})),
        (" seed = 7", ("seed", 7)),
        ("note=a=b", ("note", "a=b")),
    ],
)
def test_parse_set_reads_values_as_yaml(item: str, expected: tuple[str, object]) -> None:
    assert parse_set(item) == expected


@pytest.mark.parametrize("item", ["inner.lr", "=3", "inner..lr=3", "inner.lr=[1, 2"])
def test_parse_set_rejects_bad_items_in_one_line(item: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_set(item)
    (issue,) = issues_of(excinfo)
    assert "\n" not in issue
    assert item in issue


def test_parse_set_names_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"--set expects key=value, e\.g\. --set inner\.lr=0\.4"):
        parse_set("inner.lr")


# --- load_config_file --------------------------------------------------------------------------

CONFIG = {"task": {"shots": 3}, "outer": {"lr": 0.005}, "eval": {"shots": [1, 5]}}


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("cfg.toml", "[task]\nshots = 3\n\n[outer]\nlr = 5e-3\n\n[eval]\nshots = [1, 5]\n"),
        ("cfg.yaml", "task:\n  shots: 3\nouter:\n  lr: 5e-3\neval:\n  shots: [1, 5]\n"),
        ("cfg.yml", "task: {shots: 3}\nouter: {lr: 0.005}\neval: {shots: [1, 5]}\n"),
        ("cfg.json", json.dumps(CONFIG)),
    ],
)
def test_load_config_file_reads_every_format(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    assert load_config_file(path) == CONFIG


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("empty.yaml", "# nothing yet\n"),
        ("empty.toml", "\n"),
        ("empty.json", ""),
        ("blank.json", " \n"),
    ],
)
def test_an_empty_config_file_is_an_empty_config_in_every_format(
    tmp_path: Path, name: str, text: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    assert load_config_file(path) == {}


@pytest.mark.parametrize(
    ("name", "text", "pattern"),
    [
        ("missing.toml", None, "no such config file"),
        ("cfg.ini", "[task]\n", "unknown config format '.ini'; use .toml, .yaml or .json"),
        ("bad.toml", "[task\nshots = 3\n", "invalid TOML: .*; fix the syntax"),
        ("bad.yaml", "task: [1, 2\n", r"invalid YAML: .* at line \d+, column \d+; fix the syntax"),
        ("bad.json", '{"task": }', "invalid JSON: .*; fix the syntax"),
        ("list.yaml", "- 1\n- 2\n", "top level must be a mapping of config keys, not list"),
        ("keys.yaml", "task:\n  1: 2\n", "key 1 is not a string"),
    ],
)
def test_load_config_file_errors_are_one_line(
    tmp_path: Path, name: str, text: str | None, pattern: str
) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=pattern) as excinfo:
        load_config_file(path)
    (issue,) = issues_of(excinfo)
    assert issue.startswith(f"{path}: ")
    assert "\n" not in issue


# --- resolve: precedence and provenance --------------------------------------------------------


def test_preset_alone_resolves_with_provenance(host: PluginHost) -> None:
    resolved = resolve(host, preset="wave")
    config = resolved.config
    assert config.preset == "wave"
    assert config.task.shots == 5
    assert config.train.iterations == 100
    assert resolved.provenance["task.shots"] == "preset wave"
    assert resolved.provenance["preset"] == "preset wave"
    assert resolved.provenance["task.query"] == "default"
    assert resolved.provenance["train.meta_batch_size"] == "default"


def test_precedence_preset_file_set_overrides(host: PluginHost, tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.toml"
    cfg.write_text("seed = 1\n[task]\nshots = 7\nquery = 8\n[inner]\nlr = 0.2\n")
    resolved = resolve(
        host,
        preset="wave",
        file=cfg,
        sets=["inner.lr=0.3", "task.query=9", "inner.lr=0.4", "seed=2"],
        overrides={"seed": (3, "--seed"), "device": ("cpu", "--device")},
    )
    config, provenance = resolved.config, resolved.provenance
    assert (config.task.noise, provenance["task.noise"]) == (0.1, "preset wave")
    assert (config.task.shots, provenance["task.shots"]) == (7, f"file {cfg}")
    assert (config.task.query, provenance["task.query"]) == (9, "--set")
    assert (config.inner.lr, provenance["inner.lr"]) == (0.4, "--set")  # later --set wins
    assert (config.seed, provenance["seed"]) == (3, "--seed")
    assert (config.device, provenance["device"]) == ("cpu", "--device")
    assert (config.inner.steps, provenance["inner.steps"]) == (1, "preset wave")
    assert (config.kernel.strategy, provenance["kernel.strategy"]) == ("auto", "default")


def test_set_merges_deeply(host: PluginHost) -> None:
    resolved = resolve(host, preset="wave", sets=["task.shots=2", "task={query: 4}"])
    task = resolved.config.task
    assert (task.name, task.shots, task.query, task.noise) == ("wave", 2, 4, 0.1)
    assert resolved.provenance["task.name"] == "preset wave"
    assert resolved.provenance["task.query"] == "--set"


def test_list_values_replace_and_are_leaves(host: PluginHost) -> None:
    resolved = resolve(host, preset="wave", sets=["model.hidden=[8, 8, 8]", "eval.shots=[1, 5]"])
    assert resolved.config.model.hidden == (8, 8, 8)
    assert resolved.config.eval.shots == (1, 5)
    assert resolved.provenance["model.hidden"] == "--set"
    assert resolved.provenance["eval.shots"] == "--set"


def test_provenance_covers_every_leaf_of_the_config(host: PluginHost) -> None:
    resolved = resolve(host, preset="wave")
    dumped = resolved.config.model_dump()
    leaves = {
        f"{section}.{key}" if isinstance(values, dict) else section
        for section, values in dumped.items()
        for key in (values if isinstance(values, dict) else [None])
    }
    assert set(resolved.provenance) == leaves


def test_no_preset_everything_from_sets(host: PluginHost) -> None:
    sets = ["task.name=wave", "model.name=net", "algorithm.name=meta", "outer.name=step"]
    resolved = resolve(host, sets=sets)
    assert resolved.config.preset is None
    assert resolved.config.task.shots == 10
    assert resolved.provenance["task.name"] == "--set"
    assert resolved.provenance["preset"] == "default"


def test_file_can_choose_the_preset(host: PluginHost, tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("preset: wave\ntask:\n  shots: 1\n")
    resolved = resolve(host, file=cfg)
    assert resolved.config.preset == "wave"
    assert resolved.config.train.iterations == 100
    assert resolved.provenance["preset"] == f"file {cfg}"
    assert resolved.provenance["train.iterations"] == "preset wave"


def test_file_naming_another_preset_conflicts(host: PluginHost, tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.json"
    cfg.write_text('{"preset": "other"}')
    with pytest.raises(ConfigError) as excinfo:
        resolve(host, preset="wave", file=cfg)
    assert issues_of(excinfo) == [
        f"preset: 'other' (from file {cfg}) conflicts with the chosen preset 'wave'; "
        "drop one of them"
    ]


def test_unknown_preset_named_in_a_file_is_one_issue(host: PluginHost, tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.toml"
    cfg.write_text('preset = "wav"\n')
    with pytest.raises(ConfigError) as excinfo:
        resolve(host, file=cfg)
    (issue,) = issues_of(excinfo)
    assert issue.startswith("preset: Unknown preset 'wav'. Did you mean 'wave'?")
    assert issue.endswith(f"(from file {cfg})")


def test_plugin_sections_keep_their_subclass(host: PluginHost) -> None:
    config = resolve(host, preset="wave").config
    assert type(config.task) is WaveConfig
    assert type(config.model) is NetConfig
    assert type(config.outer) is StepConfig
    dumped = config.model_dump()
    assert dumped["task"]["amplitude"] == (0.1, 5.0)
    assert dumped["outer"]["betas"] == (0.9, 0.999)


def test_resolved_config_is_frozen(host: PluginHost) -> None:
    resolved = resolve(host, preset="wave")
    with pytest.raises(ValidationError, match="frozen"):
        resolved.config.inner.lr = 1.0  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        resolved.config.task.shots = 1  # type: ignore[misc]
    with pytest.raises(AttributeError):
        resolved.config = resolved.config  # type: ignore[misc]


# --- resolve: errors ---------------------------------------------------------------------------


def test_bad_value_names_key_message_and_source(host: PluginHost) -> None:
    with pytest.raises(ConfigError) as excinfo:
        resolve(host, preset="wave", sets=["task.shots=0"])
    assert issues_of(excinfo) == [
        "task.shots: Input should be greater than or equal to 1 (from --set)"
    ]
    assert excinfo.value.exit_code == 2


def test_bad_value_from_file_and_preset_name_them(host: PluginHost, tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.toml"
    cfg.write_text("[kernel]\nstrategy = 'fast'\n")
    bad_preset = Preset("broken", "", {**WAVE_PRESET.values, "inner": {"lr": -1.0}})

    @hookimpl
    def register_presets(register):  # type: ignore[no-untyped-def]
        register(bad_preset)

    undo = host.add_plugin(SimpleNamespace(register_presets=register_presets), "broken")
    try:
        with pytest.raises(ConfigError) as excinfo:
            resolve(host, preset="broken", file=cfg)
    finally:
        undo()
    assert issues_of(excinfo) == [
        "inner.lr: Input should be greater than 0 (from preset broken)",
        "kernel.strategy: Input should be 'auto', 'loop', 'batched', 'compiled', "
        f"'compiled-loop', 'compiled-split' or 'cudagraphs' (from file {cfg})",
    ]


def test_unknown_key_suggests_the_close_field(host: PluginHost) -> None:
    with pytest.raises(ConfigError) as excinfo:
        resolve(host, preset="wave", sets=["task.shotz=5", "train.iteratons=3"])
    assert issues_of(excinfo) == [
        "task.shotz: Extra inputs are not permitted; did you mean task.shots? (from --set)",
        "train.iteratons: Extra inputs are not permitted; did you mean train.iterations? "
        "(from --set)",
    ]


def test_unknown_key_finds_a_plugin_field_and_a_misplaced_key(host: PluginHost) -> None:
    with pytest.raises(ConfigError) as excinfo:
        resolve(host, preset="wave", sets=["task.nosie=0.2", "iterations=5", "zzz=1"])
    assert issues_of(excinfo) == [
        "task.nosie: Extra inputs are not permitted; did you mean task.noise? (from --set)",
        "iterations: Extra inputs are not permitted; did you mean train.iterations? (from --set)",
        "zzz: Extra inputs are not permitted (from --set)",
    ]


def test_unknown_plugin_name_in_a_section(host: PluginHost) -> None:
    with pytest.raises(ConfigError) as excinfo:
        resolve(host, preset="wave", sets=["task.name=wavy"])
    (issue,) = issues_of(excinfo)
    assert issue.startswith("task.name: Unknown task family 'wavy'. Did you mean 'wave'?")
    assert issue.endswith("(from --set)")
    assert "\n" not in issue


def test_missing_plugin_name_says_how_to_choose_one(host: PluginHost) -> None:
    with pytest.raises(ConfigError) as excinfo:
        resolve(host, sets=["model.name=net", "algorithm.name=meta", "outer.name=step"])
    assert issues_of(excinfo) == [
        "task.name: Field required — choose a preset with --plugin NAME or set task.name"
    ]


def test_section_that_is_not_a_mapping(host: PluginHost) -> None:
    with pytest.raises(ConfigError) as excinfo:
        resolve(host, preset="wave", sets=["outer=3", "inner=fast"])
    assert issues_of(excinfo) == [
        "outer: Input should be a mapping of outer options (from --set)",
        "inner: Input should be a valid dictionary or instance of InnerConfig (from --set)",
    ]


def test_several_errors_are_reported_together(host: PluginHost, tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("train:\n  meta_batch_size: 0\n")
    with pytest.raises(ConfigError) as excinfo:
        resolve(
            host,
            preset="wave",
            file=cfg,
            sets=["task.shots=-1", "model.name=nett", "eval.shots=[1, x]", "outer.lr=0"],
            overrides={"seed": ("abc", "--seed")},
        )
    issues = issues_of(excinfo)
    assert issues[0] == "task.shots: Input should be greater than or equal to 1 (from --set)"
    assert issues[1].startswith("model.name: Unknown model 'nett'. Did you mean 'net'?")
    assert issues[2] == "outer.lr: Input should be greater than 0 (from --set)"
    assert issues[3:] == [
        "seed: Input should be a valid integer, unable to parse string as an integer (from --seed)",
        f"train.meta_batch_size: Input should be greater than or equal to 1 (from file {cfg})",
        "eval.shots.1: Input should be a valid integer, unable to parse string as an integer "
        "(from --set)",
    ]
    assert str(excinfo.value) == "\n".join(issues)


def test_unknown_preset_raises_the_hosts_error(host: PluginHost) -> None:
    with pytest.raises(UnknownNameError, match=r"Unknown preset 'wav'\. Did you mean 'wave'\?"):
        resolve(host, preset="wav")


def test_bad_set_item_fails_before_anything_else(host: PluginHost) -> None:
    with pytest.raises(ConfigError, match="--set expects key=value"):
        resolve(host, preset="wave", sets=["inner.lr"])


# --- save / load -------------------------------------------------------------------------------


def test_save_and_load_round_trip(host: PluginHost, tmp_path: Path) -> None:
    resolved = resolve(
        host, preset="wave", sets=["model.hidden=[3]", "eval.shots=[1, 5]", "outer.lr=2e-4"]
    )
    path = tmp_path / "run" / "config.json"
    save_resolved(resolved, path)
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]  # no temporary left over
    payload = json.loads(path.read_text())
    assert payload["config"]["task"]["noise"] == 0.1
    assert payload["provenance"]["outer.lr"] == "--set"
    loaded = load_saved(host, path)
    assert isinstance(loaded, ResolvedConfig)
    assert loaded == resolved
    assert type(loaded.config.task) is WaveConfig


def test_save_replaces_an_existing_file(host: PluginHost, tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("old")
    resolved = resolve(host, preset="wave")
    save_resolved(resolved, path)
    assert load_saved(host, path) == resolved


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        (None, "no saved config"),
        ('{"config": {', "saved config is unreadable"),
        ("[1, 2]", "not a saved mamlflow config"),
        ('{"config": {}, "provenance": {"seed": 1}}', "not a saved mamlflow config"),
    ],
)
def test_corrupt_saved_file_is_one_line(tmp_path: Path, host: PluginHost, text, pattern) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "config.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(CheckpointError, match=pattern) as excinfo:
        load_saved(host, path)
    message = str(excinfo.value)
    assert message.startswith(f"{path}: ")
    assert "\n" not in message


def test_saved_config_is_validated_again(host: PluginHost, tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    save_resolved(resolve(host, preset="wave"), path)
    payload = json.loads(path.read_text())
    payload["config"]["task"] = {**payload["config"]["task"], "name": "gone"}
    path.write_text(json.dumps(payload))
    with pytest.raises(ConfigError) as excinfo:
        load_saved(host, path)
    (issue,) = issues_of(excinfo)
    assert issue.startswith("task.name: Unknown task family 'gone'.")
    assert issue.endswith(f"(from file {path})")


# --- schema listing ----------------------------------------------------------------------------


def test_config_schema_lists_every_key(host: PluginHost) -> None:
    rows = {row.key: row for row in config_schema(host)}
    assert rows["inner.lr"] == ConfigField(
        "inner.lr", 0.01, "float", "inner learning rate (α in the paper)"
    )
    assert rows["task.name"].default is ...
    assert rows["kernel.strategy"].type == (
        "auto|loop|batched|compiled|compiled-loop|compiled-split|cudagraphs"
    )
    assert "task.noise" not in rows  # without a preset, plugin sections show the base fields


def test_config_schema_with_a_preset_shows_its_plugins_and_values(host: PluginHost) -> None:
    rows = {row.key: row for row in config_schema(host, preset="wave")}
    assert rows["preset"].default == "wave"
    assert rows["task.name"].default == "wave"
    assert rows["task.shots"].default == 5
    assert rows["task.noise"] == ConfigField("task.noise", 0.1, "float", "label noise")
    assert rows["outer.betas"].default == (0.9, 0.999)
    assert rows["train.iterations"].default == 100
    assert rows["train.meta_batch_size"].default == 25


def test_as_resolved_attributes_a_bare_config_and_keeps_what_a_saved_one_shares() -> None:
    from mamlflow.engine import as_resolved

    host = PluginHost(autoload=False)
    resolved = resolve(host, preset="sinusoid", sets=("inner.lr=0.02",))
    assert as_resolved(resolved) is resolved
    bare = as_resolved(resolved.config)
    assert set(bare.provenance) == set(resolved.provenance)
    assert set(bare.provenance.values()) == {"Python"}
    changed = resolved.config.model_copy(update={"seed": 7})
    again = as_resolved(changed, previous=resolved)
    assert again.provenance["seed"] == "Python"
    assert again.provenance["inner.lr"] == "--set"
    assert again.provenance["task.shots"] == "preset sinusoid"


def test_a_saved_config_that_predates_an_option_gets_the_value_its_run_used(
    tmp_path: Path,
) -> None:
    from mamlflow.engine import load_saved, save_resolved

    host = PluginHost(autoload=False)
    resolved = resolve(host, preset="omniglot")
    assert resolved.config.task.distinct == "characters"  # type: ignore[attr-defined]
    path = tmp_path / "config.json"
    save_resolved(resolved, path)
    older = json.loads(path.read_text())
    del older["config"]["task"]["distinct"]  # as written before the option existed
    path.write_text(json.dumps(older))
    loaded = load_saved(host, path)
    assert loaded.config.task.distinct == "classes"  # type: ignore[attr-defined]
    assert loaded.provenance["task.distinct"] == "run saved before the option existed"
    assert load_saved(host, tmp_path / "config.json").config.task.name == "omniglot"


def test_choosing_another_plugin_drops_the_presets_options_for_the_one_it_chose() -> None:
    """``--set model.name=mlp`` on an Omniglot preset: conv4's filters and downsample, set by
    the preset for conv4, do not reach the MLP; an option the user writes still must fit."""
    host = PluginHost(autoload=False)
    resolved = resolve(host, preset="omniglot", sets=["model.name=mlp"])
    assert resolved.config.model.name == "mlp"
    assert resolved.config.task.ways == 5  # the rest of the preset is kept
    assert not any(key.startswith("model.filters") for key in resolved.provenance)
    with pytest.raises(ConfigError) as info:
        resolve(host, preset="omniglot", sets=["model.name=mlp", "model.filters=3"])
    assert info.value.issues == ["model.filters: Extra inputs are not permitted (from --set)"]
    # A preset's own choice keeps its options checked: a typo in a preset is still an error.
    with pytest.raises(ConfigError):
        resolve(host, preset="omniglot", sets=["model.filterz=3"])
