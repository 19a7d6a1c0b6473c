"""The plugin host: every hook, lazy loading, isolation of broken plugins, and lookups.

Nothing here depends on the built-in plugins: hosts are built with ``builtins=()`` (or with
modules written to ``tmp_path``), temporary plugins are added with ``add_plugin`` and removed with
its undo function, and entry points are real ``*.dist-info`` folders put on ``sys.path``.
"""

from __future__ import annotations

import ast
import importlib
import sys
import textwrap
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import mamlflow
from mamlflow.core import (
    Adapter,
    Algorithm,
    Callback,
    InnerConfig,
    ModelIO,
    ModelPlugin,
    OuterOptimizer,
    PluginError,
    Preset,
    TaskBatch,
    TaskFamily,
    TaskObjective,
    UnknownNameError,
    hookimpl,
    sgd,
)
from mamlflow.engine import Component, PluginHost, PluginWarning, get_host, reset_host

HOST_PY = Path(__file__).resolve().parents[2] / "mamlflow" / "engine" / "host.py"


# -- components of every kind --------------------------------------------------------------------


class Omniglot(TaskFamily):
    """A stand-in task family; only looked up, never sampled."""

    name = "omniglot"
    metric = "accuracy"

    @property
    def io(self) -> ModelIO:
        return ModelIO(input_shape=(1,), output_dim=1)

    def sample(self, seed: int, iteration: int, task_indices: torch.Tensor, **_: Any) -> TaskBatch:
        raise NotImplementedError

    def objective(self, model: Callable[..., torch.Tensor]) -> TaskObjective:
        raise NotImplementedError

    def score(self, model: Callable[..., torch.Tensor]) -> TaskObjective:
        raise NotImplementedError


class Sinusoid(Omniglot):
    name = "sinusoid"
    description = "stand-in sinusoid"


class TinyModel(ModelPlugin):
    name = "tiny"

    def build(self, io: ModelIO) -> nn.Module:
        return nn.Linear(io.input_shape[0], io.output_dim)


class PlainAlgorithm(Algorithm):
    name = "plain"

    def adapter(self, inner: InnerConfig) -> Adapter:
        return sgd(inner.lr)


class PlainSGD(OuterOptimizer):
    name = "plain-sgd"

    def build(self, params: Any) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=self.config.lr)


class Printer(Callback):
    name = "printer"


TINY_PRESET = Preset("tiny", "a tiny run", {"task": {"name": "omniglot"}})


def hello() -> None:
    """Say hello."""


class AllKinds:
    """A plugin implementing every hook, one component each."""

    @hookimpl
    def register_task_families(self, register: Callable[[type[TaskFamily]], None]) -> None:
        register(Omniglot)
        register(Sinusoid)

    @hookimpl
    def register_models(self, register: Callable[[type[ModelPlugin]], None]) -> None:
        register(TinyModel)

    @hookimpl
    def register_algorithms(self, register: Callable[[type[Algorithm]], None]) -> None:
        register(PlainAlgorithm)

    @hookimpl
    def register_optimizers(self, register: Callable[[type[OuterOptimizer]], None]) -> None:
        register(PlainSGD)

    @hookimpl
    def register_presets(self, register: Callable[[Preset], None]) -> None:
        register(TINY_PRESET)

    @hookimpl
    def register_callbacks(self, register: Callable[[type[Callback]], None]) -> None:
        register(Printer)

    @hookimpl
    def register_commands(self, register: Callable[[str, Any], None]) -> None:
        register("hello", hello)


class Registers:
    """A plugin whose ``register_task_families`` registers the given objects, in order."""

    def __init__(self, *objs: Any, raises: Exception | None = None) -> None:
        self.objs = objs
        self.raises = raises

    @hookimpl
    def register_task_families(self, register: Callable[[Any], None]) -> None:
        for obj in self.objs:
            register(obj)
        if self.raises is not None:
            raise self.raises


@pytest.fixture
def host() -> PluginHost:
    return PluginHost(builtins=(), autoload=False, strict=False)


def plugin_warnings(record: pytest.WarningsRecorder, needle: str = "") -> list[str]:
    """Messages of the recorded ``PluginWarning``s that contain ``needle``."""
    messages = [str(w.message) for w in record if issubclass(w.category, PluginWarning)]
    return [m for m in messages if needle in m]


def assert_one_line_warning(record: pytest.WarningsRecorder, needle: str = "") -> str:
    messages = plugin_warnings(record, needle)
    assert len(messages) == 1, messages
    assert "\n" not in messages[0]
    assert messages[0].startswith("mamlflow: plugin '")
    return messages[0]


# -- every hook ----------------------------------------------------------------------------------


def test_every_hook_registers_a_component_that_lookups_return(host: PluginHost) -> None:
    undo = host.add_plugin(AllKinds(), "all-kinds")

    assert host.task_family("omniglot") is Omniglot  # register_task_families
    assert host.model("tiny") is TinyModel  # register_models
    assert host.algorithm("plain") is PlainAlgorithm  # register_algorithms
    assert host.optimizer("plain-sgd") is PlainSGD  # register_optimizers
    assert host.preset("tiny") is TINY_PRESET  # register_presets
    assert host.callback("printer") is Printer  # register_callbacks
    assert host.commands() == {"hello": hello}  # register_commands
    assert host.names("task_family") == ["omniglot", "sinusoid"]
    assert host.failures == []

    families = host.components("task_family")
    assert [c.name for c in families] == ["omniglot", "sinusoid"]
    assert families[1] == Component(
        "task_family", "sinusoid", Sinusoid, "all-kinds (added at runtime)", "stand-in sinusoid"
    )
    assert families[1].distribution is None  # added at runtime: no package to uninstall
    assert families[0].description == "A stand-in task family; only looked up, never sampled."
    assert host.components("preset")[0].description == "a tiny run"
    assert host.components("command")[0].description == "Say hello."
    assert {c.kind for c in host.components()} == {
        "task_family",
        "model",
        "algorithm",
        "optimizer",
        "preset",
        "callback",
        "command",
    }

    undo()
    assert host.names("task_family") == []
    assert host.commands() == {}
    undo()  # idempotent


def test_each_hook_is_called_once_and_only_when_its_kind_is_needed(host: PluginHost) -> None:
    calls: list[str] = []

    class Counting:
        @hookimpl
        def register_task_families(self, register: Callable[[Any], None]) -> None:
            calls.append("register_task_families")
            register(Omniglot)

        @hookimpl
        def register_commands(self, register: Callable[[str, Any], None]) -> None:
            calls.append("register_commands")
            register("hello", hello)

    host.add_plugin(Counting(), "counting")
    assert calls == []
    host.task_family("omniglot")
    host.task_family("omniglot")
    host.names("task_family")
    assert calls == ["register_task_families"]
    host.commands()
    assert calls == ["register_task_families", "register_commands"]


def test_plugins_load_on_first_lookup_not_when_the_host_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cleanup_modules: list[str]
) -> None:
    write_module(tmp_path, "mf_test_lazy_builtin", CALLBACK_PLUGIN.format(name="lazy"))
    monkeypatch.syspath_prepend(str(tmp_path))
    cleanup_modules.append("mf_test_lazy_builtin")

    host = PluginHost(builtins=("mf_test_lazy_builtin",), autoload=False)
    assert "mf_test_lazy_builtin" not in sys.modules
    assert host.callback("lazy").__module__ == "mf_test_lazy_builtin"
    builtin = host.components("callback")[0]
    assert builtin.source == "mamlflow (built-in)"
    assert (builtin.distribution, builtin.version) == ("mamlflow", mamlflow.__version__)


def test_host_module_imports_no_cli_or_heavy_optional_libraries() -> None:
    tree = ast.parse(HOST_PY.read_text())
    imported = {
        alias.name for n in ast.walk(tree) if isinstance(n, ast.Import) for alias in n.names
    }
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    banned = ("typer", "rich", "numba", "matplotlib", "mamlflow.cli", "cli")
    assert not {m for m in imported if m.split(".")[0] in banned or m.startswith(banned)}


# -- lookups -------------------------------------------------------------------------------------


def test_unknown_name_suggests_the_closest_and_lists_the_rest(host: PluginHost) -> None:
    host.add_plugin(Registers(Omniglot, Sinusoid), "families")
    with pytest.raises(UnknownNameError) as info:
        host.task_family("omnyglot")
    assert str(info.value) == (
        "Unknown task family 'omnyglot'. Did you mean 'omniglot'? Available: omniglot, sinusoid. "
        "Run 'metaflow plugins' to list components "
        "or 'metaflow plugins install <package>' to add one."
    )
    with pytest.raises(UnknownNameError, match=r"^Unknown model 'zzz'\. Available: none\. Run"):
        host.model("zzz")
    with pytest.raises(UnknownNameError) as info:
        host.task_family("xyzzy")
    assert "Did you mean" not in str(info.value)


def test_names_rejects_an_unknown_kind(host: PluginHost) -> None:
    with pytest.raises(ValueError, match="unknown component kind 'dataset'"):
        host.names("dataset")  # type: ignore[arg-type]


# -- invalid registrations -----------------------------------------------------------------------


class Abstract(TaskFamily):
    name = "abstract"
    metric = "mse"


class Nameless(Omniglot):
    name = ""


class WrongConfig(Omniglot):
    name = "wrong-config"
    Config = TinyModel.Config  # type: ignore[assignment]


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        (5, "registered int 5 as a task family, but it is not a subclass of TaskFamily"),
        (TinyModel, "but it is not a subclass of TaskFamily"),
        (Abstract, "but it is abstract (implement io, objective, sample, score)"),
        (Nameless, "but its name '' is not a non-empty string without spaces"),
        (WrongConfig, "but its Config is not a subclass of TaskConfig"),
    ],
)
def test_a_wrong_object_is_one_warning_and_the_rest_is_kept(
    host: PluginHost, obj: Any, reason: str
) -> None:
    host.add_plugin(Registers(obj, Sinusoid), "sloppy")
    with pytest.warns(PluginWarning) as record:
        assert host.names("task_family") == ["sinusoid"]
    message = assert_one_line_warning(record)
    assert message.startswith("mamlflow: plugin 'sloppy' (added at runtime) registered ")
    assert reason in message
    assert [f.message for f in host.failures] == [message]
    assert host.failures[0].source == "sloppy (added at runtime)"


def test_wrong_presets_and_commands_are_rejected(host: PluginHost) -> None:
    class Sloppy:
        @hookimpl
        def register_presets(self, register: Callable[[Any], None]) -> None:
            register({"name": "dict-preset"})

        @hookimpl
        def register_commands(self, register: Callable[[str, Any], None]) -> None:
            register("not callable", 3)

    host.add_plugin(Sloppy(), "sloppy")
    with pytest.warns(PluginWarning) as record:
        assert host.names("preset") == []
    assert "but it is not a Preset" in assert_one_line_warning(record)
    with pytest.warns(PluginWarning) as record:
        assert host.commands() == {}
    assert "registered int 3 as a command, but it is not callable" in assert_one_line_warning(
        record
    )


def test_a_hook_that_raises_loses_only_its_own_plugin(host: PluginHost) -> None:
    host.add_plugin(Registers(Omniglot, raises=RuntimeError("boom\nsecond line")), "raising")
    host.add_plugin(Registers(Sinusoid), "fine")
    with pytest.warns(PluginWarning) as record:
        assert host.names("task_family") == ["sinusoid"]
    message = assert_one_line_warning(record)
    assert message == (
        "mamlflow: plugin 'raising' (added at runtime) raised RuntimeError: boom second line in "
        "register_task_families, so none of its task families are available; "
        "fix the plugin passed to PluginHost.add_plugin()"
    )


def test_a_duplicate_name_keeps_the_first_and_names_both_sources(host: PluginHost) -> None:
    host.add_plugin(Registers(Omniglot), "first")
    host.add_plugin(Registers(Omniglot, Sinusoid), "second")
    with pytest.warns(PluginWarning) as record:
        assert host.names("task_family") == ["omniglot", "sinusoid"]
    message = assert_one_line_warning(record)
    assert message == (
        "mamlflow: plugin 'second' (added at runtime) registers a task family 'omniglot' that "
        "duplicates the one from first (added at runtime); the first one is kept — rename it"
    )
    assert host.components("task_family")[0].source == "first (added at runtime)"


def test_a_misspelled_hook_rejects_the_plugin_with_one_warning(host: PluginHost) -> None:
    class Misspelled:
        @hookimpl
        def register_task_familes(self, register: Callable[[Any], None]) -> None:
            register(Omniglot)

        @hookimpl
        def register_callbacks(self, register: Callable[[Any], None]) -> None:
            register(Printer)

    with pytest.warns(PluginWarning) as record:
        undo = host.add_plugin(Misspelled(), "misspelled")
    message = assert_one_line_warning(record)
    assert "unknown hook 'register_task_familes' (did you mean 'register_task_families'?)" in (
        message
    )
    assert host.names("callback") == []  # the whole plugin is out, not just the bad hook
    undo()
    assert host.failures == []
    host.add_plugin(Registers(Omniglot), "after")
    assert host.names("task_family") == ["omniglot"]


def test_a_hookimpl_with_an_unknown_argument_is_rejected(host: PluginHost) -> None:
    class ExtraArgument:
        @hookimpl
        def register_models(self, register: Callable[[Any], None], device: str) -> None:
            register(TinyModel)

    with pytest.warns(PluginWarning) as record:
        host.add_plugin(ExtraArgument(), "extra")
    assert "is not a valid mamlflow plugin" in assert_one_line_warning(record)
    assert host.names("model") == []


def test_add_plugin_refuses_a_name_in_use(host: PluginHost) -> None:
    host.add_plugin(AllKinds(), "taken")
    with pytest.raises(ValueError, match="'taken' is already registered"):
        host.add_plugin(AllKinds(), "taken")


def test_strict_mode_raises_the_same_message_and_stays_raised() -> None:
    strict = PluginHost(builtins=(), autoload=False, strict=True)
    strict.add_plugin(Registers(5), "sloppy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # strict mode raises instead of warning
        with pytest.raises(PluginError, match=r"^mamlflow: plugin 'sloppy' .* registered int 5"):
            strict.names("task_family")
        with pytest.raises(PluginError):
            strict.names("model")
    assert len(strict.failures) == 1


def test_strict_mode_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    class Misspelled:
        @hookimpl
        def register_task_familes(self, register: Callable[[Any], None]) -> None:
            """Misspelled on purpose."""

    monkeypatch.setenv("MAMLFLOW_STRICT_PLUGINS", "1")
    host = PluginHost(builtins=(), autoload=False)
    with pytest.raises(PluginError, match="unknown hook 'register_task_familes'"):
        host.add_plugin(Misspelled(), "misspelled")


def test_get_host_is_one_lazily_created_host() -> None:
    reset_host()
    try:
        assert get_host() is get_host()
        first = get_host()
        reset_host()
        assert get_host() is not first
    finally:
        reset_host()


# -- real entry points ---------------------------------------------------------------------------

CALLBACK_PLUGIN = """
from mamlflow.core.callbacks import Callback
from mamlflow.core.hookspecs import hookimpl


class Plugged(Callback):
    name = "{name}"


@hookimpl
def register_callbacks(register):
    register(Plugged)
"""

PRESET_PLUGIN = """
from mamlflow.core.config import Preset
from mamlflow.core.hookspecs import hookimpl


@hookimpl
def register_presets(register):
    register(Preset("sinusoid", "{description}"))
"""


def write_module(root: Path, module: str, source: str) -> None:
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    importlib.invalidate_caches()


@pytest.fixture
def cleanup_modules() -> Iterator[list[str]]:
    """Module names a test imports from ``tmp_path``; dropped from ``sys.modules`` afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        sys.modules.pop(name, None)


@pytest.fixture
def install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cleanup_modules: list[str]
) -> Callable[[str, str, str, str], None]:
    """Install a one-module distribution with one ``mamlflow`` entry point, without pip."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def install(dist: str, entry_point: str, module: str, source: str) -> None:
        write_module(tmp_path, module, source)
        info = tmp_path / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[mamlflow]\n{entry_point} = {module}\n")
        cleanup_modules.append(module)
        importlib.invalidate_caches()

    return install


def test_an_entry_point_that_fails_to_import_is_one_warning(
    install: Callable[[str, str, str, str], None],
) -> None:
    install("mamlflow-broken", "broken", "mf_test_broken", "import mf_test_no_such_module\n")
    install("mamlflow-good", "good", "mf_test_good", CALLBACK_PLUGIN.format(name="good"))
    host = PluginHost(autoload=True, builtins=())
    assert "mf_test_good" not in sys.modules

    with pytest.warns(PluginWarning) as record:
        assert host.callback("good").__module__ == "mf_test_good"
        host.callback("good")
        host.names("model")
    message = assert_one_line_warning(record, "mamlflow-broken")
    assert message == (
        "mamlflow: plugin 'broken' (mamlflow-broken 1.0) failed to load (mf_test_broken): "
        "ModuleNotFoundError: No module named 'mf_test_no_such_module'; "
        "uninstall it with `pip uninstall mamlflow-broken` or set MAMLFLOW_AUTOLOAD_PLUGINS=0"
    )
    assert plugin_warnings(record, "mamlflow-good") == []
    broken = [f for f in host.failures if f.plugin == "broken"]
    assert [f.source for f in broken] == ["mamlflow-broken 1.0 (entry point broken)"]
    assert [(f.distribution, f.version) for f in broken] == [("mamlflow-broken", "1.0")]
    good = host.components("callback")[0]
    assert good.source == "mamlflow-good 1.0 (entry point good)"
    assert (good.distribution, good.version) == ("mamlflow-good", "1.0")


def test_strict_mode_turns_a_broken_entry_point_into_an_error(
    install: Callable[[str, str, str, str], None],
) -> None:
    install("mamlflow-broken", "broken", "mf_test_broken", "raise ImportError('needs numpyy')\n")
    host = PluginHost(autoload=True, builtins=(), strict=True)
    expected = r"^mamlflow: plugin 'broken' \(mamlflow-broken 1\.0\) failed to load .*numpyy"
    with pytest.raises(PluginError, match=expected):
        host.names("callback")
    with pytest.raises(PluginError, match=expected):
        host.names("callback")


def test_an_entry_point_with_a_misspelled_hook_is_one_warning(
    install: Callable[[str, str, str, str], None],
) -> None:
    source = CALLBACK_PLUGIN.format(name="typo") + (
        "\n\n@hookimpl\ndef register_task_familes(register):\n    pass\n"
    )
    install("mamlflow-typo", "typo", "mf_test_typo", source)
    host = PluginHost(autoload=True, builtins=())
    with pytest.warns(PluginWarning) as record:
        assert "typo" not in host.names("callback")
    message = assert_one_line_warning(record, "mamlflow-typo")
    assert message.startswith(
        "mamlflow: plugin 'typo' (mamlflow-typo 1.0) implements unknown hook "
        "'register_task_familes' (did you mean 'register_task_families'?)"
    )
    assert message.endswith("`pip uninstall mamlflow-typo` or set MAMLFLOW_AUTOLOAD_PLUGINS=0")


def test_an_entry_point_duplicating_a_builtin_loses_and_names_both_sources(
    tmp_path: Path, install: Callable[[str, str, str, str], None], cleanup_modules: list[str]
) -> None:
    write_module(tmp_path, "mf_test_builtin", PRESET_PLUGIN.format(description="built-in one"))
    cleanup_modules.append("mf_test_builtin")
    install("mamlflow-foo", "foo", "mf_test_foo", PRESET_PLUGIN.format(description="foo's"))
    host = PluginHost(autoload=True, builtins=("mf_test_builtin",))
    with pytest.warns(PluginWarning) as record:
        assert host.preset("sinusoid").description == "built-in one"
    assert assert_one_line_warning(record, "mamlflow-foo") == (
        "mamlflow: plugin 'foo' (mamlflow-foo 1.0) registers a preset 'sinusoid' that "
        "duplicates the one from mamlflow (built-in); the first one is kept — "
        "rename it or uninstall mamlflow-foo"
    )


# Issue 5's three broken plugins, as installed packages: each kind's documented line, in full.
BROKEN_KINDS = {
    "import error": (
        "mamlflow-broken",
        "broken",
        "import mf_test_no_such_module\n",
        "mamlflow: plugin 'broken' (mamlflow-broken 1.0) failed to load (mf_test_broken_kind): "
        "ModuleNotFoundError: No module named 'mf_test_no_such_module'; "
        "uninstall it with `pip uninstall mamlflow-broken` or set MAMLFLOW_AUTOLOAD_PLUGINS=0",
    ),
    "misspelled hook": (
        "mamlflow-typo",
        "typo",
        CALLBACK_PLUGIN.format(name="typo")
        + "\n\n@hookimpl\ndef register_task_familes(register):\n    pass\n",
        "mamlflow: plugin 'typo' (mamlflow-typo 1.0) implements unknown hook "
        "'register_task_familes' (did you mean 'register_task_families'?), so none of its hooks "
        "are used; fix the hook name in the plugin, or uninstall it with "
        "`pip uninstall mamlflow-typo` or set MAMLFLOW_AUTOLOAD_PLUGINS=0",
    ),
    "duplicate name": (
        "mamlflow-foo",
        "foo",
        PRESET_PLUGIN.format(description="foo's"),
        "mamlflow: plugin 'foo' (mamlflow-foo 1.0) registers a preset 'sinusoid' that "
        "duplicates the one from mamlflow (built-in); the first one is kept — "
        "rename it or uninstall mamlflow-foo",
    ),
}


@pytest.fixture(params=list(BROKEN_KINDS))
def broken(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    install: Callable[[str, str, str, str], None],
    cleanup_modules: list[str],
) -> tuple[tuple[str, ...], str]:
    """One kind of broken plugin, installed: the host's built-ins and the expected line."""
    dist, entry_point, source, expected = BROKEN_KINDS[request.param]
    # A built-in preset 'sinusoid' for the duplicate to clash with; harmless for the others.
    write_module(tmp_path, "mf_test_builtin", PRESET_PLUGIN.format(description="built-in one"))
    cleanup_modules.append("mf_test_builtin")
    install(dist, entry_point, "mf_test_broken_kind", source)
    return ("mf_test_builtin",), expected


def test_each_broken_plugin_kind_is_its_documented_one_line_warning(
    broken: tuple[tuple[str, ...], str],
) -> None:
    builtins, expected = broken
    host = PluginHost(autoload=True, builtins=builtins, strict=False)
    with pytest.warns(PluginWarning) as record:
        components = host.components()
    assert assert_one_line_warning(record) == expected
    assert [f.message for f in host.failures] == [expected]
    assert ("preset", "sinusoid") in {(c.kind, c.name) for c in components}  # the rest works


@pytest.mark.parametrize("switch", ["argument", "environment"])
def test_strict_mode_turns_each_broken_plugin_kind_into_an_error_with_the_same_line(
    broken: tuple[tuple[str, ...], str], monkeypatch: pytest.MonkeyPatch, switch: str
) -> None:
    builtins, expected = broken
    monkeypatch.setenv("MAMLFLOW_STRICT_PLUGINS", "1" if switch == "environment" else "0")
    strict = True if switch == "argument" else None
    host = PluginHost(autoload=True, builtins=builtins, strict=strict)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # strict raises instead of warning
        with pytest.raises(PluginError) as info:
            host.components()
        assert str(info.value) == expected
        with pytest.raises(PluginError) as again:  # and stays raised
            host.names("callback")
        assert str(again.value) == expected
    assert [f.message for f in host.failures] == [expected]


@pytest.mark.parametrize("switch", ["argument", "environment"])
def test_autoload_off_skips_entry_points_but_not_builtins(
    tmp_path: Path,
    install: Callable[[str, str, str, str], None],
    cleanup_modules: list[str],
    monkeypatch: pytest.MonkeyPatch,
    switch: str,
) -> None:
    write_module(tmp_path, "mf_test_builtin", CALLBACK_PLUGIN.format(name="builtin"))
    cleanup_modules.append("mf_test_builtin")
    install("mamlflow-good", "good", "mf_test_good", CALLBACK_PLUGIN.format(name="good"))
    monkeypatch.setenv("MAMLFLOW_AUTOLOAD_PLUGINS", "0" if switch == "environment" else "1")
    autoload = False if switch == "argument" else None
    host = PluginHost(autoload=autoload, builtins=("mf_test_builtin",))
    assert host.names("callback") == ["builtin"]
    assert "mf_test_good" not in sys.modules


def test_two_entry_points_with_one_name_keep_the_first(
    install: Callable[[str, str, str, str], None],
) -> None:
    install("mamlflow-aaa", "same", "mf_test_aaa", CALLBACK_PLUGIN.format(name="aaa"))
    install("mamlflow-bbb", "same", "mf_test_bbb", CALLBACK_PLUGIN.format(name="bbb"))
    host = PluginHost(autoload=True, builtins=())
    with pytest.warns(PluginWarning) as record:
        assert host.names("callback") == ["aaa"]
    assert assert_one_line_warning(record, "mamlflow-bbb") == (
        "mamlflow: plugin 'same' (mamlflow-bbb 1.0) has the same name as the plugin from "
        "mamlflow-aaa 1.0 (entry point same), which is kept; rename it or uninstall mamlflow-bbb"
    )


def test_an_entry_point_to_an_already_loaded_module_is_reported(
    tmp_path: Path, install: Callable[[str, str, str, str], None], cleanup_modules: list[str]
) -> None:
    write_module(tmp_path, "mf_test_builtin", CALLBACK_PLUGIN.format(name="builtin"))
    cleanup_modules.append("mf_test_builtin")
    install("mamlflow-again", "again", "mf_test_builtin", CALLBACK_PLUGIN.format(name="builtin"))
    host = PluginHost(autoload=True, builtins=("mf_test_builtin",))
    with pytest.warns(PluginWarning) as record:
        assert host.names("callback") == ["builtin"]
    message = assert_one_line_warning(record, "mamlflow-again")
    assert "is the same module as the plugin from mamlflow (built-in), already loaded" in message
