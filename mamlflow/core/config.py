"""Run configuration: the schema of a run and its resolution from presets, files and ``--set``.

Sections with a ``name`` (``task``, ``model``, ``algorithm``, ``outer``) are validated by the
``Config`` class of the plugin the name selects, and ``callbacks.<name>`` by the ``Config`` of each
callback ``train.callbacks`` enables; the others have fixed schemas below. Every model is frozen
and forbids unknown keys, so a typo is an error rather than a silently ignored value.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError
from pydantic.fields import FieldInfo

from ._io import atomic_write
from .algorithm import AlgorithmConfig
from .callbacks import CallbackConfig
from .errors import CheckpointError, ConfigError, UnknownNameError
from .learner import ModelConfig
from .optim import OuterConfig
from .plugin_config import PluginConfig
from .task import TaskConfig

if TYPE_CHECKING:
    from .host import PluginHost

__all__ = [
    "ConfigField",
    "EvalConfig",
    "InnerConfig",
    "KernelConfig",
    "Preset",
    "ResolvedConfig",
    "RunConfig",
    "TrainConfig",
    "config_schema",
    "load_config_file",
    "load_saved",
    "parse_set",
    "resolve",
    "save_resolved",
]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TrainConfig(_Section):
    iterations: int = Field(70_000, ge=1, description="meta-training iterations (outer steps)")
    meta_batch_size: int = Field(25, ge=1, description="tasks per outer step")
    time_limit: float | None = Field(
        None, gt=0, description="seconds; stop cleanly with a checkpoint when exceeded"
    )
    log_every: int = Field(100, ge=1, description="iterations between metrics records")
    checkpoint_every: int = Field(5_000, ge=1, description="iterations between checkpoints")
    checkpoint_every_minutes: float | None = Field(
        None,
        gt=0,
        description="also checkpoint when this many minutes of wall-clock time have passed since "
        "the last checkpoint (null: by iterations only)",
    )
    val_every: int | None = Field(
        None, ge=1, description="iterations between validations (null: never); keeps the best"
    )
    val_tasks: int = Field(200, ge=2, description="validation tasks, adapted eval.steps steps")
    callbacks: tuple[str, ...] = Field(
        ("metrics",),
        description="callback plugins to enable, e.g. [metrics, csv, early_stopping] (list: "
        "metaflow plugins); their options go under callbacks.<name>",
    )


class InnerConfig(_Section):
    steps: int = Field(1, ge=0, description="inner gradient steps during meta-training")
    lr: float = Field(0.01, gt=0, description="inner learning rate (α in the paper)")
    first_order: bool = Field(False, description="drop second derivatives (first-order MAML)")


class KernelConfig(_Section):
    strategy: Literal[
        "auto", "loop", "batched", "compiled", "compiled-loop", "compiled-split", "cudagraphs"
    ] = Field(
        "auto",
        description="meta-step implementation: auto times the candidates on the first batch "
        "and keeps the fastest that matches loop, the per-task reference",
    )
    dtype: Literal["float32", "float64"] = Field("float32", description="parameter dtype")
    autocast: Literal["none", "bfloat16"] = Field(
        "none",
        description="bfloat16: run the meta-step's convolutions and matmuls in bfloat16 under "
        "torch.autocast (CPUs with AVX512-BF16 or AMX, recent GPUs); parameters, optimizer and "
        "evaluation stay in kernel.dtype. Changes the numerics: see the README for its measured "
        "effect on speed and accuracy",
    )


class EvalConfig(_Section):
    shots: tuple[int, ...] = Field((), description="support sizes to evaluate; empty: task.shots")
    steps: int = Field(10, ge=0, description="adaptation steps at test time")
    tasks: int = Field(1000, ge=2, description="held-out tasks")
    query: int | None = Field(None, ge=1, description="query examples per task; null: task.query")
    batch_size: int = Field(100, ge=1, description="tasks adapted at once during evaluation")
    split: Literal["val", "test"] = Field("test", description="which held-out split")
    later_steps_lr_scale: float = Field(
        1.0,
        gt=0,
        description="multiply the update of every adaptation step after the first by this "
        "(the MAML authors' RL evaluation takes its first step at the trained rate and the "
        "later ones at half of it: 0.5)",
    )


class RunConfig(_Section):
    """A fully resolved run configuration, saved as ``config.json`` in the run directory."""

    preset: str | None = Field(None, description="the preset this run started from")
    seed: int = Field(0, description="seeds initialisation and every task sample")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    task: SerializeAsAny[TaskConfig]
    model: SerializeAsAny[ModelConfig]
    algorithm: SerializeAsAny[AlgorithmConfig]
    outer: SerializeAsAny[OuterConfig]
    inner: InnerConfig = InnerConfig()
    train: TrainConfig = TrainConfig()
    kernel: KernelConfig = KernelConfig()
    eval: EvalConfig = EvalConfig()
    callbacks: dict[str, SerializeAsAny[CallbackConfig]] = Field(
        default_factory=dict,
        description="options of each callback train.callbacks enables: callbacks.<name>.<option>",
    )


@dataclass(frozen=True)
class Preset:
    """A named configuration; ``values`` is a nested mapping of config keys."""

    name: str
    description: str
    values: Mapping[str, Any] = field(default_factory=dict)

    def derive(self, name: str, description: str, values: Mapping[str, Any]) -> Preset:
        """A new preset: this one's values with ``values`` merged over them key by key.

        How an algorithm plugin pairs itself with a task family's schedule, e.g. ``omniglot``
        with ``algorithm.name=anil``, without copying (and drifting from) the family's preset.
        """

        def merged(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
            out = dict(base)
            for key, value in over.items():
                old = out.get(key)
                both = isinstance(value, Mapping) and isinstance(old, Mapping)
                out[key] = merged(old, value) if both else value
            return out

        return Preset(name, description, merged(self.values, values))


# --- Resolution ------------------------------------------------------------------------------
#
# A run's configuration is merged from layers, later winning: schema defaults < preset < file <
# ``--set`` items (in order) < CLI overrides such as ``--seed``. Nested mappings merge key by key,
# so ``--set task.shots=5`` keeps the other ``task`` keys. Every leaf remembers which layer set
# it; validation errors name that layer, and the provenance is saved with the run.

_PLUGIN_SECTIONS: dict[str, tuple[str, type[PluginConfig]]] = {
    "task": ("task_family", TaskConfig),
    "model": ("model", ModelConfig),
    "algorithm": ("algorithm", AlgorithmConfig),
    "outer": ("optimizer", OuterConfig),
}
_DEFAULT = "default"
_MISSING = object()


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, also reading ``1e-3`` as a float (YAML 1.1 demands ``1.0e-3``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


@dataclass(frozen=True)
class ResolvedConfig:
    """A validated run configuration and, per dotted leaf key, where its value came from.

    Sources read ``"default"``, ``"preset NAME"``, ``"file PATH"``, ``"--set"``, or the label of a
    CLI override such as ``"--seed"``.
    """

    config: RunConfig
    provenance: dict[str, str]


class ConfigField(NamedTuple):
    """One row of ``config_schema``; ``default`` is ``...`` for a required field."""

    key: str
    default: Any
    type: str
    description: str


def parse_set(item: str) -> tuple[str, Any]:
    """Split ``"inner.lr=0.4"`` into ``("inner.lr", 0.4)``; the value is read as YAML.

    So ``true``, ``1e-3``, ``[5, 10]``, ``{a: 1}`` and ``null`` have their YAML types and anything
    else is a string.
    """
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError([f"--set {item!r}: --set expects key=value, e.g. --set inner.lr=0.4"])
    if any(not part for part in key.split(".")):
        raise ConfigError([f"--set {item!r}: empty part in key {key!r}; write e.g. task.shots=5"])
    try:
        value = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as error:
        raise ConfigError(
            [f"--set {item!r}: the value is not valid YAML ({_yaml_problem(error)}); quote it"]
        ) from None
    return key, value


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a nested mapping of config keys from a ``.toml``, ``.yaml``/``.yml`` or ``.json``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml", ".json"):
        found = suffix or "(no suffix)"
        raise ConfigError([f"{path}: unknown config format {found!r}; use .toml, .yaml or .json"])
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such config file; check the path"]) from None
    except OSError as error:
        raise ConfigError([f"{path}: cannot read config file ({error.strerror})"]) from None
    try:
        if suffix == ".toml":
            data: Any = tomllib.loads(raw.decode("utf-8"))
        elif suffix == ".json":
            data = json.loads(raw)
        else:
            data = yaml.load(raw, Loader=_Loader)
            data = {} if data is None else data  # an empty YAML file is an empty config
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text; save the file as UTF-8"]) from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, yaml.YAMLError) as error:
        kind = {".toml": "TOML", ".json": "JSON"}.get(suffix, "YAML")
        problem = _yaml_problem(error) if isinstance(error, yaml.YAMLError) else str(error)
        raise ConfigError([f"{path}: invalid {kind}: {problem}; fix the syntax"]) from None
    if not isinstance(data, dict):
        raise ConfigError(
            [f"{path}: the top level must be a mapping of config keys, not {type(data).__name__}"]
        )
    bad_key = _non_string_key(data)
    if bad_key is not None:
        raise ConfigError([f"{path}: key {bad_key!r} is not a string; config keys are names"])
    return data


def resolve(
    host: PluginHost,
    *,
    preset: str | None = None,
    file: Path | None = None,
    sets: Sequence[str] = (),
    overrides: Mapping[str, tuple[Any, str]] = MappingProxyType({}),
) -> ResolvedConfig:
    """Merge and validate a run configuration: defaults < preset < file < ``sets`` < ``overrides``.

    ``overrides`` maps dotted keys to ``(value, source label)``, e.g. ``{"seed": (3, "--seed")}``.
    Without ``preset``, a ``preset`` key in the file or ``sets`` selects one. Raises
    ``UnknownNameError`` for an unknown ``preset`` and ``ConfigError`` listing every bad value.
    """
    layers: list[tuple[dict[str, Any], str]] = []
    if file is not None:
        layers.append((_nest(load_config_file(file)), f"file {file}"))
    layers += [(_nest(dict([parse_set(item)])), "--set") for item in sets]
    layers += [(_nest({key: value}), label) for key, (value, label) in overrides.items()]

    issues: list[str] = []
    merged: dict[str, Any] = {}
    provenance: dict[str, str] = {}
    chosen = _chosen_preset(preset, layers, issues)
    if chosen is not None:
        name, source = chosen
        try:
            values = host.preset(name).values
        except UnknownNameError as error:
            if preset is not None:
                raise
            # Without its preset the rest would only add "name required" noise: stop here.
            raise ConfigError([*issues, f"preset: {error} (from {source})"]) from None
        else:
            _merge(merged, _nest(values), f"preset {name}", provenance)
            _merge(merged, {"preset": name}, source, provenance)
    for layer, source in layers:
        _merge(merged, layer, source, provenance)
    config = _validate(host, merged, provenance, issues)
    return ResolvedConfig(config, _leaf_provenance(config, provenance))


# --- Persistence -----------------------------------------------------------------------------


def save_resolved(resolved: ResolvedConfig, path: Path) -> None:
    """Write ``{"config": ..., "provenance": ...}`` as JSON, atomically (no half-written file)."""
    path = Path(path)
    payload = {
        "config": resolved.config.model_dump(mode="json"),
        "provenance": dict(resolved.provenance),
    }
    atomic_write(path, (json.dumps(payload, indent=2) + "\n").encode("utf-8"))


def load_saved(host: PluginHost, path: Path) -> ResolvedConfig:
    """Read what ``save_resolved`` wrote and validate it again against the installed plugins.

    Raises ``CheckpointError`` when the file is missing or not a saved config, and
    ``ConfigError`` when its values no longer validate (e.g. a plugin was uninstalled).
    """
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(
            f"{path}: no saved config; is this a run directory made by `metaflow run`?"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(
            f"{path}: saved config is unreadable ({error}); restore it or start a new run"
        ) from None
    config = payload.get("config") if isinstance(payload, dict) else None
    saved = payload.get("provenance") if isinstance(payload, dict) else None
    if (
        not isinstance(config, dict)
        or not isinstance(saved, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in saved.items())
    ):
        raise CheckpointError(
            f"{path}: not a saved mamlflow config (expected 'config' and 'provenance' mappings); "
            "restore it or start a new run"
        )
    # Errors name the saved file; the returned provenance is the one the run was resolved with.
    source = f"file {path}"
    error_sources = {key: source for key in _leaf_keys(config)}
    validated = _validate(host, config, error_sources, [], saved=True)
    return ResolvedConfig(validated, _leaf_provenance(validated, saved))


# --- Schema listing --------------------------------------------------------------------------


def config_schema(host: PluginHost, preset: str | None = None) -> list[ConfigField]:
    """Every config key with its default, type and description, for ``metaflow config`` help.

    With ``preset``, plugin sections list the fields of the plugins the preset selects and
    defaults show the preset's values.
    """
    values = _nest(host.preset(preset).values) if preset is not None else {}
    rows: list[ConfigField] = []
    for name, info in RunConfig.model_fields.items():
        section = values.get(name)
        if name in _PLUGIN_SECTIONS:
            lookup, base = _PLUGIN_SECTIONS[name]
            chosen = section.get("name") if isinstance(section, dict) else None
            model = getattr(host, lookup)(chosen).Config if isinstance(chosen, str) else base
            rows += _schema_rows(model, name, section)
        elif name == "callbacks":
            # Every registered callback's options, enabled or not: this is where users find them.
            for component in host.components("callback"):
                options = section.get(component.name) if isinstance(section, dict) else None
                rows += _schema_rows(component.obj.Config, f"{name}.{component.name}", options)
        elif isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            rows += _schema_rows(info.annotation, name, section)
        else:
            default = section if name in values else info.default
            if name == "preset" and preset is not None:
                default = preset
            rows.append(ConfigField(name, default, _type_name(info.annotation), _doc(info)))
    return rows


# --- Helpers ---------------------------------------------------------------------------------


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one line."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return f"{error.problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(error).split())


def _non_string_key(data: Any) -> Any:
    """The first mapping key anywhere in ``data`` that is not a string, or None."""
    if isinstance(data, dict):
        for key, value in data.items():
            if not isinstance(key, str):
                return key
            found = _non_string_key(value)
            if found is not None:
                return found
    elif isinstance(data, list):
        for value in data:
            found = _non_string_key(value)
            if found is not None:
                return found
    return None


def _nest(values: Mapping[str, Any]) -> dict[str, Any]:
    """Expand dotted keys at every level: ``{"task.shots": 5}`` -> ``{"task": {"shots": 5}}``."""
    nested: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            value = _nest(value)
        *parents, leaf = str(key).split(".")
        node = nested
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        if isinstance(value, dict) and isinstance(node.get(leaf), dict):
            _merge(node[leaf], value, "", {})
        else:
            node[leaf] = value
    return nested


def _forget(provenance: dict[str, str], key: str) -> None:
    """Drop the sources of ``key`` and everything below it (its value is being replaced)."""
    for known in [k for k in provenance if k == key or k.startswith(key + ".")]:
        del provenance[known]


def _merge(
    into: dict[str, Any],
    layer: Mapping[str, Any],
    source: str,
    provenance: dict[str, str],
    prefix: str = "",
) -> None:
    """Deep-merge ``layer`` into ``into``, recording ``source`` for every leaf it sets."""
    for key, value in layer.items():
        dotted = prefix + key
        if isinstance(value, Mapping):
            node = into.get(key)
            if not isinstance(node, dict):
                _forget(provenance, dotted)
                node = into[key] = {}
            _merge(node, value, source, provenance, dotted + ".")
        else:
            _forget(provenance, dotted)
            into[key] = value
            provenance[dotted] = source


def _chosen_preset(
    preset: str | None, layers: list[tuple[dict[str, Any], str]], issues: list[str]
) -> tuple[str, str] | None:
    """The preset to start from and the source that chose it."""
    named = [(layer["preset"], source) for layer, source in layers if "preset" in layer]
    if preset is not None:
        for name, source in named:
            if name != preset:
                issues.append(
                    f"preset: {name!r} (from {source}) conflicts with the chosen preset "
                    f"{preset!r}; drop one of them"
                )
        return preset, f"preset {preset}"
    if named and isinstance(named[-1][0], str):
        return named[-1]
    return None


def _source(provenance: Mapping[str, str], key: str) -> str | None:
    """Where the value at dotted ``key`` came from; None for a schema default."""
    if key in provenance:
        return provenance[key]
    below = sorted({src for k, src in provenance.items() if k.startswith(key + ".")})
    if below:
        return ", ".join(below)
    while "." in key:  # an element of a list, or a key inside a value set as a whole
        key = key.rsplit(".", 1)[0]
        if key in provenance:
            return provenance[key]
    return None


def _validate(
    host: PluginHost,
    data: Mapping[str, Any],
    provenance: Mapping[str, str],
    issues: list[str],
    *,
    saved: bool = False,
) -> RunConfig:
    """Validate in two phases: each plugin section by its plugin's ``Config``, then the run.

    ``saved``: ``data`` is a saved run's config, which may enable callbacks whose plugins are no
    longer installed (see ``_callback_options``). Raises one ``ConfigError`` holding ``issues``
    plus every problem found here.
    """
    values = dict(data)
    models: dict[str, type[BaseModel]] = {}
    for section, (lookup, base) in _PLUGIN_SECTIONS.items():
        models[section] = base
        # Until the section validates, a placeholder lets the rest of the run still be checked.
        values[section] = base.model_construct(name="?")
        raw = data.get(section, _MISSING)
        src = _from(provenance, section)
        if raw is _MISSING or (isinstance(raw, Mapping) and "name" not in raw):
            issues.append(
                f"{section}.name: Field required — choose a preset with --plugin NAME "
                f"or set {section}.name"
            )
            continue
        if not isinstance(raw, Mapping):
            issues.append(f"{section}: Input should be a mapping of {section} options{src}")
            continue
        name = raw["name"]
        name_from = _from(provenance, f"{section}.name")
        if not isinstance(name, str):
            issues.append(f"{section}.name: Input should be a valid string{name_from}")
            continue
        try:
            plugin = getattr(host, lookup)(name)
        except UnknownNameError as error:
            issues.append(f"{section}.name: {error}{name_from}")
            continue
        models[section] = plugin.Config
        try:
            values[section] = plugin.Config.model_validate(raw)
        except ValidationError as error:
            issues += _issues(error, section, raw, provenance, models)
    values["callbacks"] = _callback_options(host, data, provenance, issues, models, saved=saved)
    try:
        config = RunConfig.model_validate(values)
    except ValidationError as error:
        issues += _issues(error, None, values, provenance, models)
    if not issues:
        # Checks across sections (early stopping needs validation), once each section is valid.
        enabled_from = _from(provenance, "train.callbacks")
        for name, options in config.callbacks.items():
            if not isinstance(options, _UnregisteredCallbackConfig):
                problem = host.callback(name).check_config(config)
                if problem is not None:
                    issues.append(f"train.callbacks: {problem}{enabled_from}")
    if issues:
        raise ConfigError(issues)
    return config


class _UnregisteredCallbackConfig(CallbackConfig):
    """The options of a callback no installed plugin registers, kept exactly as written."""

    model_config = ConfigDict(frozen=True, extra="allow")


def _callback_options(
    host: PluginHost,
    data: Mapping[str, Any],
    provenance: Mapping[str, str],
    issues: list[str],
    models: dict[str, type[BaseModel]],
    *,
    saved: bool,
) -> dict[str, CallbackConfig]:
    """The validated options of every callback ``train.callbacks`` enables, by name.

    A callback without options in ``callbacks`` gets its ``Config``'s defaults, so the saved
    config records every value a run used. Options for a callback that is not enabled are an
    error, not silently ignored. An unknown name is an error where the user wrote it; a saved
    run or the schema default may name a callback no installed plugin registers (evaluating a
    run must not need the plugins that only logged it; a host without built-ins has no
    ``metrics``): its options are kept as written, and a trainer still refuses the name.
    """
    train = data.get("train")
    names: Any = train.get("callbacks", _MISSING) if isinstance(train, Mapping) else _MISSING
    if names is _MISSING:
        names = TrainConfig.model_fields["callbacks"].default
    trusted = saved or _source(provenance, "train.callbacks") in (None, _DEFAULT)
    names_valid = isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names)
    if not names_valid:
        names = ()  # RunConfig's validation of train.callbacks reports the type
    enabled_from = _from(provenance, "train.callbacks")
    section = data.get("callbacks")
    if section is None:
        section = {}
    elif not isinstance(section, Mapping):
        issues.append(
            "callbacks: Input should be a mapping from callback names to their options"
            f"{_from(provenance, 'callbacks')}"
        )
        section = {}

    options: dict[str, CallbackConfig] = {}
    seen: set[str] = set()
    for name in names:
        key = f"callbacks.{name}"
        if name in seen:
            issues.append(f"train.callbacks: '{name}' is listed twice; list it once{enabled_from}")
            continue
        seen.add(name)
        raw = section.get(name)
        raw = {} if raw is None else raw  # YAML's `csv:` with nothing below it
        if not isinstance(raw, Mapping):
            issues.append(
                f"{key}: Input should be a mapping of {name} options{_from(provenance, key)}"
            )
            continue
        try:
            config_model = host.callback(name).Config
        except UnknownNameError as error:
            if not trusted:
                issues.append(f"train.callbacks: {error}{enabled_from}")
                continue
            config_model = _UnregisteredCallbackConfig
        models[key] = config_model
        try:
            options[name] = config_model.model_validate(raw)
        except ValidationError as error:
            issues += _issues(error, key, raw, provenance, models)
    for name in section:
        if name in seen or not names_valid:
            continue
        key = f"callbacks.{name}"
        try:
            host.callback(name)
        except UnknownNameError as error:
            issues.append(f"{key}: {error}{_from(provenance, key)}")
            continue
        issues.append(
            f"{key}: options for a callback train.callbacks does not enable; add '{name}' to "
            f"train.callbacks or drop these options{_from(provenance, key)}"
        )
    return options


def _from(provenance: Mapping[str, str], key: str) -> str:
    source = _source(provenance, key)
    return "" if source is None or source == _DEFAULT else f" (from {source})"


def _issues(
    error: ValidationError,
    section: str | None,
    data: Any,
    provenance: Mapping[str, str],
    models: Mapping[str, type[BaseModel]],
) -> list[str]:
    """One line per pydantic error: ``dotted.key: message[; did you mean ...?] (from source)``."""
    lines = []
    for item in error.errors(include_url=False):
        parts = ([section] if section else []) + _loc_path(item["loc"], data)
        key = ".".join(parts)
        hint = ""
        if item["type"] == "extra_forbidden":
            guess = _did_you_mean(parts, models)
            hint = f"; did you mean {guess}?" if guess else ""
        lines.append(f"{key}: {item['msg']}{hint}{_from(provenance, key)}")
    return lines


def _loc_path(loc: tuple[int | str, ...], data: Any) -> list[str]:
    """Pydantic's ``loc`` as config keys, dropping the union tags it inserts between them."""
    parts: list[str] = []
    node = data
    for index, item in enumerate(loc):
        last = index == len(loc) - 1
        if isinstance(node, Mapping):
            if item in node:
                node = node[item]
            elif last:  # a missing field: its name is still the key to report
                node = _MISSING
            else:
                continue
        elif isinstance(node, (list, tuple)) and isinstance(item, int) and item < len(node):
            node = node[item]
        elif isinstance(node, BaseModel) and isinstance(item, str):
            node = getattr(node, item, _MISSING)
        else:
            continue
        parts.append(str(item))
    return parts


def _field_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted keys of every field of ``model``, nested models included."""
    keys = []
    for name, info in model.model_fields.items():
        keys.append(prefix + name)
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            keys += _field_keys(info.annotation, f"{prefix}{name}.")
    return keys


def _did_you_mean(parts: list[str], models: Mapping[str, type[BaseModel]]) -> str | None:
    """The known key closest to an unknown one: a similar sibling, or the same name elsewhere."""
    known = []
    for name, info in RunConfig.model_fields.items():
        known.append(name)
        model = models.get(name, info.annotation)
        if isinstance(model, type) and issubclass(model, BaseModel):
            known += _field_keys(model, name + ".")
    for name, model in models.items():
        if "." in name:  # a nested section such as callbacks.csv
            known += [name, *_field_keys(model, name + ".")]
    key = ".".join(parts)
    parent = key.rsplit(".", 1)[0] + "." if len(parts) > 1 else ""
    siblings = [k[len(parent) :] for k in known if k.startswith(parent) and k != key]
    siblings = [k for k in siblings if "." not in k]
    close = difflib.get_close_matches(parts[-1], siblings, n=1, cutoff=0.7)
    if close:
        return parent + close[0]
    elsewhere = [k for k in known if k.rsplit(".", 1)[-1] == parts[-1]]
    return elsewhere[0] if len(elsewhere) == 1 else None


def _leaf_keys(value: Any, prefix: str = "") -> list[str]:
    """Dotted keys of the leaves of a nested mapping (lists and empty mappings are leaves)."""
    if isinstance(value, Mapping) and value:
        keys = []
        for key, child in value.items():
            keys += _leaf_keys(child, f"{prefix}{key}.")
        return keys
    return [prefix[:-1]] if prefix else []


def _leaf_provenance(config: RunConfig, provenance: Mapping[str, str]) -> dict[str, str]:
    """The source of every leaf of the validated config; unset leaves are schema defaults."""
    return {key: _source(provenance, key) or _DEFAULT for key in _leaf_keys(config.model_dump())}


def _schema_rows(model: type[BaseModel], prefix: str, values: Any) -> list[ConfigField]:
    rows = []
    values = values if isinstance(values, dict) else {}
    for name, info in model.model_fields.items():
        key = f"{prefix}.{name}"
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            rows += _schema_rows(info.annotation, key, values.get(name))
            continue
        if name in values:
            default = values[name]
        elif info.is_required():
            default = ...
        else:
            default = info.get_default(call_default_factory=True)
        rows.append(ConfigField(key, default, _type_name(info.annotation), _doc(info)))
    return rows


def _type_name(annotation: Any) -> str:
    if get_origin(annotation) is Literal:
        return "|".join(str(choice) for choice in get_args(annotation))
    if isinstance(annotation, type) and not get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _doc(info: FieldInfo) -> str:
    return info.description or ""
