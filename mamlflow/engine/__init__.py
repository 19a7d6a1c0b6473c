"""The machinery that runs a config: plugin host, resolution, training, evaluation, benchmark.

* ``host``: loads plugins (the built-ins, then installed entry points) and looks names up;
* ``resolution``: a run config from presets, files and ``--set``, with provenance;
* ``components``: the live task family, model, algorithm and adapter a config names, and the
  ``sources`` of its meta-batches (sampled tasks, or ``rollouts`` collected in them);
* ``trainer``, ``evaluation``, ``checkpoint``, ``distributed``: a run, end to end;
* ``bench``: the measuring harness behind ``metaflow bench``;
* ``deploy`` and ``userdata``: a trained run adapted to a user's own examples, saved, loaded and
  used to predict (``metaflow adapt``, ``predict``, ``export``).

This module is the package's only entrance from outside it.
"""

from __future__ import annotations

from .bench import COMPILED_STRATEGIES as COMPILED_STRATEGIES
from .bench import ORDERS as ORDERS
from .bench import AutoChoice as AutoChoice
from .bench import BenchReport as BenchReport
from .bench import Order as Order
from .bench import StrategyResult as StrategyResult
from .bench import benchmark as benchmark
from .bench import count_flops as count_flops
from .bench import device_name as device_name
from .bench import device_strategies as device_strategies
from .bench import matmul_peak_gflops as matmul_peak_gflops
from .bench import peak_memory_mib as peak_memory_mib
from .checkpoint import Checkpoint as Checkpoint
from .checkpoint import load_checkpoint as load_checkpoint
from .checkpoint import save_checkpoint as save_checkpoint
from .components import Components as Components
from .components import build_components as build_components
from .components import resolve_device as resolve_device
from .deploy import AdaptedModel as AdaptedModel
from .deploy import MetaModel as MetaModel
from .deploy import answers as answers
from .deploy import load_adapted as load_adapted
from .deploy import load_run as load_run
from .distributed import DEFAULT_TIMEOUT_S as DEFAULT_TIMEOUT_S
from .distributed import DIST_TIMEOUT_ENV as DIST_TIMEOUT_ENV
from .distributed import THREADS_ENV as THREADS_ENV
from .distributed import Dist as Dist
from .distributed import DistributedError as DistributedError
from .distributed import check_device as check_device
from .distributed import from_env as from_env
from .distributed import launched_by_torchrun as launched_by_torchrun
from .distributed import threads_per_process as threads_per_process
from .evaluation import DIVERGED as DIVERGED
from .evaluation import EvalExamples as EvalExamples
from .evaluation import EvalResult as EvalResult
from .evaluation import evaluate as evaluate
from .guard import plugin_code as plugin_code
from .guard import writing as writing
from .host import AUTOLOAD_ENV as AUTOLOAD_ENV
from .host import BUILTINS as BUILTINS
from .host import ENTRY_POINT_GROUP as ENTRY_POINT_GROUP
from .host import STRICT_ENV as STRICT_ENV
from .host import Component as Component
from .host import ComponentKind as ComponentKind
from .host import PluginFailure as PluginFailure
from .host import PluginHost as PluginHost
from .host import PluginWarning as PluginWarning
from .host import get_host as get_host
from .host import reset_host as reset_host
from .locking import EVAL_FILES as EVAL_FILES
from .locking import EVAL_LOCK as EVAL_LOCK
from .locking import RUN_LOCK as RUN_LOCK
from .locking import check_unlocked as check_unlocked
from .locking import remove_stale_temporaries as remove_stale_temporaries
from .locking import run_lock as run_lock
from .resolution import ConfigField as ConfigField
from .resolution import ResolvedConfig as ResolvedConfig
from .resolution import as_resolved as as_resolved
from .resolution import config_schema as config_schema
from .resolution import load_config_file as load_config_file
from .resolution import load_saved as load_saved
from .resolution import parse_set as parse_set
from .resolution import resolve as resolve
from .resolution import save_resolved as save_resolved
from .rollouts import CollectedPolicyTerms as CollectedPolicyTerms
from .rollouts import RolloutCurve as RolloutCurve
from .rollouts import Rollouts as Rollouts
from .sources import BatchSource as BatchSource
from .sources import CollectedRollouts as CollectedRollouts
from .sources import SampledTasks as SampledTasks
from .sources import batch_source as batch_source
from .trainer import Trainer as Trainer
from .userdata import ClassFolder as ClassFolder
from .userdata import Table as Table
from .userdata import read_class_folder as read_class_folder
from .userdata import read_images as read_images
from .userdata import read_table as read_table

__all__ = [
    "AUTOLOAD_ENV",
    "BUILTINS",
    "COMPILED_STRATEGIES",
    "DEFAULT_TIMEOUT_S",
    "DIST_TIMEOUT_ENV",
    "DIVERGED",
    "ENTRY_POINT_GROUP",
    "EVAL_FILES",
    "EVAL_LOCK",
    "ORDERS",
    "RUN_LOCK",
    "STRICT_ENV",
    "THREADS_ENV",
    "AdaptedModel",
    "AutoChoice",
    "BatchSource",
    "BenchReport",
    "Checkpoint",
    "ClassFolder",
    "CollectedPolicyTerms",
    "CollectedRollouts",
    "Component",
    "ComponentKind",
    "Components",
    "ConfigField",
    "Dist",
    "DistributedError",
    "EvalExamples",
    "EvalResult",
    "MetaModel",
    "Order",
    "PluginFailure",
    "PluginHost",
    "PluginWarning",
    "ResolvedConfig",
    "RolloutCurve",
    "Rollouts",
    "SampledTasks",
    "StrategyResult",
    "Table",
    "Trainer",
    "answers",
    "as_resolved",
    "batch_source",
    "benchmark",
    "build_components",
    "check_device",
    "check_unlocked",
    "config_schema",
    "count_flops",
    "device_name",
    "device_strategies",
    "evaluate",
    "from_env",
    "get_host",
    "launched_by_torchrun",
    "load_adapted",
    "load_checkpoint",
    "load_config_file",
    "load_run",
    "load_saved",
    "matmul_peak_gflops",
    "parse_set",
    "peak_memory_mib",
    "plugin_code",
    "read_class_folder",
    "read_images",
    "read_table",
    "remove_stale_temporaries",
    "reset_host",
    "resolve",
    "resolve_device",
    "run_lock",
    "save_checkpoint",
    "save_resolved",
    "threads_per_process",
    "writing",
]
