"""mamlflow: plugin-based, batched and compiled Model-Agnostic Meta-Learning for PyTorch.

The public API is listed here explicitly; everything else is private. Importing mamlflow loads
no plugin and imports neither the CLI (typer, rich) nor numba nor matplotlib.
"""

from __future__ import annotations

from .core.adapter import Adapter as Adapter
from .core.adapter import adam as adam
from .core.adapter import apply_updates as apply_updates
from .core.adapter import chain as chain
from .core.adapter import sgd as sgd
from .core.algorithm import Algorithm as Algorithm
from .core.algorithm import AlgorithmConfig as AlgorithmConfig
from .core.callbacks import Callback as Callback
from .core.checkpoint import Checkpoint as Checkpoint
from .core.checkpoint import load_checkpoint as load_checkpoint
from .core.components import Components as Components
from .core.components import build_components as build_components
from .core.config import Preset as Preset
from .core.config import ResolvedConfig as ResolvedConfig
from .core.config import RunConfig as RunConfig
from .core.config import resolve as resolve
from .core.errors import CheckpointError as CheckpointError
from .core.errors import ConfigError as ConfigError
from .core.errors import DataError as DataError
from .core.errors import MamlflowError as MamlflowError
from .core.errors import PluginError as PluginError
from .core.errors import UnknownNameError as UnknownNameError
from .core.evaluate import EvalResult as EvalResult
from .core.evaluate import evaluate as evaluate
from .core.hookspecs import hookimpl as hookimpl
from .core.host import PluginHost as PluginHost
from .core.host import get_host as get_host
from .core.learner import Learner as Learner
from .core.learner import ModelConfig as ModelConfig
from .core.learner import ModelPlugin as ModelPlugin
from .core.optim import OuterConfig as OuterConfig
from .core.optim import OuterOptimizer as OuterOptimizer
from .core.rl import RolloutConfig as RolloutConfig
from .core.rl import RolloutTaskFamily as RolloutTaskFamily
from .core.task import ModelIO as ModelIO
from .core.task import TaskBatch as TaskBatch
from .core.task import TaskConfig as TaskConfig
from .core.task import TaskFamily as TaskFamily
from .core.trainer import Trainer as Trainer
from .kernels import make_adapt as make_adapt
from .kernels import make_meta_step as make_meta_step

__version__ = "0.1.0"

__all__ = [
    "Adapter",
    "Algorithm",
    "AlgorithmConfig",
    "Callback",
    "Checkpoint",
    "CheckpointError",
    "Components",
    "ConfigError",
    "DataError",
    "EvalResult",
    "MamlflowError",
    "ModelConfig",
    "ModelIO",
    "ModelPlugin",
    "OuterConfig",
    "OuterOptimizer",
    "PluginError",
    "PluginHost",
    "Preset",
    "ResolvedConfig",
    "RolloutConfig",
    "RolloutTaskFamily",
    "RunConfig",
    "TaskBatch",
    "TaskConfig",
    "TaskFamily",
    "Trainer",
    "UnknownNameError",
    "adam",
    "apply_updates",
    "build_components",
    "chain",
    "evaluate",
    "get_host",
    "hookimpl",
    "load_checkpoint",
    "make_adapt",
    "make_meta_step",
    "resolve",
    "sgd",
]
