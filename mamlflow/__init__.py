"""mamlflow: plugin-based, batched and compiled Model-Agnostic Meta-Learning for PyTorch.

The public API is listed here explicitly; everything else is private. It has two audiences:

* people running and embedding meta-learning: ``get_host``, ``resolve``, ``Trainer``,
  ``evaluate``, ``load_checkpoint``, ``make_meta_step``, …; and using what it learned:
  ``load_run`` (adapt a trained run to your own examples), ``load_adapted``;
* plugin authors: the contracts (``TaskFamily``, ``ModelPlugin``, ``Algorithm``, ``Adapter``,
  ``OuterOptimizer``, ``Callback``, ``Preset``, ``hookimpl``) and the types they take and return
  (``TaskBatch``, ``ModelIO``, ``Split``, ``InnerConfig``, ``CallbackConfig``, ``TrainStart``,
  ``MetricsRecord``, …), plus the counter-based random numbers in ``mamlflow.rng``, the
  normalisation layers that stay right under ``vmap`` in ``mamlflow.nn`` and the conformance
  checks in ``mamlflow.testing``.

Importing mamlflow loads no plugin and imports neither the CLI (typer, rich) nor numba nor
matplotlib.
"""

from __future__ import annotations

from . import nn as nn
from . import rng as rng
from .core import SPLITS as SPLITS
from .core import STRATEGIES as STRATEGIES
from .core import Adapter as Adapter
from .core import AdapterState as AdapterState
from .core import Algorithm as Algorithm
from .core import AlgorithmConfig as AlgorithmConfig
from .core import Callback as Callback
from .core import CallbackConfig as CallbackConfig
from .core import CheckpointError as CheckpointError
from .core import ConfigError as ConfigError
from .core import DataError as DataError
from .core import ImageInputs as ImageInputs
from .core import InnerConfig as InnerConfig
from .core import Learner as Learner
from .core import LossAndKL as LossAndKL
from .core import MamlflowError as MamlflowError
from .core import MetaStep as MetaStep
from .core import MetaStepFactory as MetaStepFactory
from .core import Metric as Metric
from .core import MetricsRecord as MetricsRecord
from .core import ModelConfig as ModelConfig
from .core import ModelIO as ModelIO
from .core import ModelPlugin as ModelPlugin
from .core import OuterConfig as OuterConfig
from .core import OuterOptimizer as OuterOptimizer
from .core import OuterStepReport as OuterStepReport
from .core import Params as Params
from .core import PluginError as PluginError
from .core import Policy as Policy
from .core import PolicyGradient as PolicyGradient
from .core import PolicyOuterOptimizer as PolicyOuterOptimizer
from .core import PolicyTerms as PolicyTerms
from .core import Preset as Preset
from .core import RolloutConfig as RolloutConfig
from .core import RolloutTaskFamily as RolloutTaskFamily
from .core import RunConfig as RunConfig
from .core import RunDir as RunDir
from .core import Split as Split
from .core import StagedObjective as StagedObjective
from .core import StepResult as StepResult
from .core import Strategy as Strategy
from .core import TaskBatch as TaskBatch
from .core import TaskConfig as TaskConfig
from .core import TaskFamily as TaskFamily
from .core import TaskObjective as TaskObjective
from .core import TrainerControl as TrainerControl
from .core import TrainStart as TrainStart
from .core import TrainSummary as TrainSummary
from .core import UnknownNameError as UnknownNameError
from .core import __version__ as __version__
from .core import adam as adam
from .core import apply_updates as apply_updates
from .core import chain as chain
from .core import hookimpl as hookimpl
from .core import sgd as sgd
from .engine import AdaptedModel as AdaptedModel
from .engine import Checkpoint as Checkpoint
from .engine import Components as Components
from .engine import EvalResult as EvalResult
from .engine import MetaModel as MetaModel
from .engine import PluginHost as PluginHost
from .engine import ResolvedConfig as ResolvedConfig
from .engine import Trainer as Trainer
from .engine import build_components as build_components
from .engine import evaluate as evaluate
from .engine import get_host as get_host
from .engine import load_adapted as load_adapted
from .engine import load_checkpoint as load_checkpoint
from .engine import load_run as load_run
from .engine import load_saved as load_saved
from .engine import resolve as resolve
from .kernels import make_adapt as make_adapt
from .kernels import make_meta_step as make_meta_step

__all__ = [
    "SPLITS",
    "STRATEGIES",
    "AdaptedModel",
    "Adapter",
    "AdapterState",
    "Algorithm",
    "AlgorithmConfig",
    "Callback",
    "CallbackConfig",
    "Checkpoint",
    "CheckpointError",
    "Components",
    "ConfigError",
    "DataError",
    "EvalResult",
    "ImageInputs",
    "InnerConfig",
    "Learner",
    "LossAndKL",
    "MamlflowError",
    "MetaModel",
    "MetaStep",
    "MetaStepFactory",
    "Metric",
    "MetricsRecord",
    "ModelConfig",
    "ModelIO",
    "ModelPlugin",
    "OuterConfig",
    "OuterOptimizer",
    "OuterStepReport",
    "Params",
    "PluginError",
    "PluginHost",
    "Policy",
    "PolicyGradient",
    "PolicyOuterOptimizer",
    "PolicyTerms",
    "Preset",
    "ResolvedConfig",
    "RolloutConfig",
    "RolloutTaskFamily",
    "RunConfig",
    "RunDir",
    "Split",
    "StagedObjective",
    "StepResult",
    "Strategy",
    "TaskBatch",
    "TaskConfig",
    "TaskFamily",
    "TaskObjective",
    "TrainStart",
    "TrainSummary",
    "Trainer",
    "TrainerControl",
    "UnknownNameError",
    "adam",
    "apply_updates",
    "build_components",
    "chain",
    "evaluate",
    "get_host",
    "hookimpl",
    "load_adapted",
    "load_checkpoint",
    "load_run",
    "load_saved",
    "make_adapt",
    "make_meta_step",
    "nn",
    "resolve",
    "rng",
    "sgd",
]
