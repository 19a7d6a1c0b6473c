"""Resolving a run's configuration: presets, files and ``--set``, with where each value came from.

A run's configuration is merged from layers, later winning: schema defaults < preset < file <
``--set`` items (in order) < CLI overrides such as ``--seed``. Nested mappings merge key by key,
so ``--set task.shots=5`` keeps the other ``task`` keys. Every leaf remembers which layer set
it; validation errors name that layer (``_validation``), and the provenance is saved with the run
(``save_resolved``, as ``config.json``).
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, NamedTuple, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from ..core import (
    SAVED_DEFAULT,
    CheckpointError,
    ConfigError,
    RunConfig,
    UnknownNameError,
    atomic_write,
)
from ._validation import DEFAULT, PLUGIN_SECTIONS, source_of, validate
from .host import PluginHost

__all__ = [
    "ConfigField",
    "ResolvedConfig",
    "as_resolved",
    "config_schema",
    "load_config_file",
    "load_saved",
    "parse_set",
    "resolve",
    "save_resolved",
]


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
        data = _parse(raw, suffix) if raw.strip() else None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text; save the file as UTF-8"]) from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, yaml.YAMLError) as error:
        kind = {".toml": "TOML", ".json": "JSON"}.get(suffix, "YAML")
        problem = _yaml_problem(error) if isinstance(error, yaml.YAMLError) else str(error)
        raise ConfigError([f"{path}: invalid {kind}: {problem}; fix the syntax"]) from None
    if data is None:
        # An empty (or comments-only) file sets nothing, whatever its format: TOML parses it as
        # an empty table, YAML as null, and JSON cannot parse it at all.
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            [f"{path}: the top level must be a mapping of config keys, not {type(data).__name__}"]
        )
    bad_key = _non_string_key(data)
    if bad_key is not None:
        raise ConfigError([f"{path}: key {bad_key!r} is not a string; config keys are names"])
    return data


def _parse(raw: bytes, suffix: str) -> Any:
    if suffix == ".toml":
        return tomllib.loads(raw.decode("utf-8"))
    if suffix == ".json":
        return json.loads(raw)
    return yaml.load(raw, Loader=_Loader)


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
    config = validate(host, merged, provenance, issues)
    return ResolvedConfig(config, _leaf_provenance(config, provenance))


def as_resolved(
    config: ResolvedConfig | RunConfig,
    source: str = "Python",
    previous: ResolvedConfig | None = None,
) -> ResolvedConfig:
    """``config`` as a ``ResolvedConfig``: what a run saves as ``config.json``.

    A bare ``RunConfig`` (built in Python, not by ``resolve``) gets ``source`` for every leaf,
    except those whose value is the same as in ``previous`` (the config a resumed run saved),
    which keep their saved source.
    """
    if isinstance(config, ResolvedConfig):
        return config
    values = _leaf_values(config.model_dump(mode="json"))
    before = {} if previous is None else _leaf_values(previous.config.model_dump(mode="json"))
    provenance = {
        key: previous.provenance.get(key, source)
        if previous is not None and key in before and before[key] == value
        else source
        for key, value in values.items()
    }
    return ResolvedConfig(config, provenance)


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
    config, predated = _with_saved_defaults(host, config)
    saved = {**saved, **{key: "run saved before the option existed" for key in predated}}
    # Errors name the saved file; the returned provenance is the one the run was resolved with.
    source = f"file {path}"
    error_sources = {key: source for key in _leaf_keys(config)}
    validated = validate(host, config, error_sources, [], saved=True)
    return ResolvedConfig(validated, _leaf_provenance(validated, saved))


def _with_saved_defaults(
    host: PluginHost, config: dict[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """A saved config with the keys it predates set to what its run used (``SAVED_DEFAULT``),
    and those keys (dotted)."""
    filled, predated = dict(config), []
    for section, (lookup, _) in PLUGIN_SECTIONS.items():
        raw = filled.get(section)
        if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
            continue
        try:
            model = getattr(host, lookup)(raw["name"]).Config
        except UnknownNameError:
            continue  # validation reports the unknown name
        missing = {
            key: extra[SAVED_DEFAULT]
            for key, info in model.model_fields.items()
            if key not in raw
            and isinstance(extra := info.json_schema_extra, dict)
            and SAVED_DEFAULT in extra
        }
        filled[section] = {**raw, **missing}
        predated += [f"{section}.{key}" for key in missing]
    return filled, predated


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
        if name in PLUGIN_SECTIONS:
            lookup, base = PLUGIN_SECTIONS[name]
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


def _leaf_keys(value: Any, prefix: str = "") -> list[str]:
    """Dotted keys of the leaves of a nested mapping (lists and empty mappings are leaves)."""
    if isinstance(value, Mapping) and value:
        keys = []
        for key, child in value.items():
            keys += _leaf_keys(child, f"{prefix}{key}.")
        return keys
    return [prefix[:-1]] if prefix else []


def _leaf_values(value: Any, prefix: str = "") -> dict[str, Any]:
    """The leaves of a nested mapping by dotted key (as ``_leaf_keys`` finds them)."""
    if isinstance(value, Mapping) and value:
        out: dict[str, Any] = {}
        for key, child in value.items():
            out.update(_leaf_values(child, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value} if prefix else {}


def _leaf_provenance(config: RunConfig, provenance: Mapping[str, str]) -> dict[str, str]:
    """The source of every leaf of the validated config; unset leaves are schema defaults."""
    return {key: source_of(provenance, key) or DEFAULT for key in _leaf_keys(config.model_dump())}


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
