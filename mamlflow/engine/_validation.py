"""Validating a merged config against the installed plugins, one line per problem.

Each plugin section (``task``, ``model``, ``algorithm``, ``outer``) is validated by the ``Config``
of the plugin its ``name`` selects and each enabled callback's options by its ``Config``, then
the run as a whole; every problem becomes ``dotted.key: message[; did you mean …?] (from
source)``, where the source is the layer that set the value (see ``resolve``).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from ..core import (
    AlgorithmConfig,
    CallbackConfig,
    ConfigError,
    ModelConfig,
    OuterConfig,
    PluginConfig,
    RunConfig,
    TaskConfig,
    TrainConfig,
    UnknownNameError,
)
from .host import PluginHost

__all__ = ["DEFAULT", "MISSING", "PLUGIN_SECTIONS", "source_of", "validate"]

PLUGIN_SECTIONS: dict[str, tuple[str, type[PluginConfig]]] = {
    "task": ("task_family", TaskConfig),
    "model": ("model", ModelConfig),
    "algorithm": ("algorithm", AlgorithmConfig),
    "outer": ("optimizer", OuterConfig),
}
DEFAULT = "default"
MISSING = object()


def source_of(provenance: Mapping[str, str], key: str) -> str | None:
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


def validate(
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
    for section, (lookup, base) in PLUGIN_SECTIONS.items():
        models[section] = base
        # Until the section validates, a placeholder lets the rest of the run still be checked.
        values[section] = base.model_construct(name="?")
        raw = data.get(section, MISSING)
        src = _from(provenance, section)
        if raw is MISSING or (isinstance(raw, Mapping) and "name" not in raw):
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
        raw = _without_preset_leftovers(raw, plugin.Config, section, provenance)
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


def _without_preset_leftovers(
    raw: Mapping[str, Any],
    config: type[BaseModel],
    section: str,
    provenance: Mapping[str, str],
) -> Mapping[str, Any]:
    """``raw`` less the preset's options that the plugin the user chose instead does not take.

    ``--plugin miniimagenet --set model.name=resnet12`` means ResNet-12 in that preset: conv4's
    ``filters`` and ``downsample``, which the preset set for the model it chose, do not apply.
    Options the user wrote are kept (and still rejected if the plugin does not take them).
    """
    if (source_of(provenance, f"{section}.name") or "").startswith("preset "):
        return raw
    return {
        key: value
        for key, value in raw.items()
        if key in config.model_fields
        or not (source_of(provenance, f"{section}.{key}") or "").startswith("preset ")
    }


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
    names: Any = train.get("callbacks", MISSING) if isinstance(train, Mapping) else MISSING
    if names is MISSING:
        names = TrainConfig.model_fields["callbacks"].default
    trusted = saved or source_of(provenance, "train.callbacks") in (None, DEFAULT)
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
    source = source_of(provenance, key)
    return "" if source is None or source == DEFAULT else f" (from {source})"


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
                node = MISSING
            else:
                continue
        elif isinstance(node, (list, tuple)) and isinstance(item, int) and item < len(node):
            node = node[item]
        elif isinstance(node, BaseModel) and isinstance(item, str):
            node = getattr(node, item, MISSING)
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
