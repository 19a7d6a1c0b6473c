"""The contracts plugins implement, and the types the rest of mamlflow passes around.

Imports torch, pluggy and pydantic only (checked in CI): no kernels, engine, CLI, numba, yaml or
plotting code. This module is the package's only entrance from outside it.
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import hookspecs as hookspecs
from . import rng as rng
from . import rundir as rundir
from .adapter import Adam as Adam
from .adapter import Adapter as Adapter
from .adapter import AdapterState as AdapterState
from .adapter import Chain as Chain
from .adapter import Params as Params
from .adapter import Scale as Scale
from .adapter import adam as adam
from .adapter import apply_updates as apply_updates
from .adapter import chain as chain
from .adapter import sgd as sgd
from .algorithm import Algorithm as Algorithm
from .algorithm import AlgorithmConfig as AlgorithmConfig
from .callbacks import Callback as Callback
from .callbacks import CallbackConfig as CallbackConfig
from .callbacks import TrainerControl as TrainerControl
from .callbacks import TrainStart as TrainStart
from .callbacks import TrainSummary as TrainSummary
from .config import SAVED_DEFAULT as SAVED_DEFAULT
from .config import EvalConfig as EvalConfig
from .config import InnerConfig as InnerConfig
from .config import KernelConfig as KernelConfig
from .config import ModelConfig as ModelConfig
from .config import OuterConfig as OuterConfig
from .config import PluginConfig as PluginConfig
from .config import Preset as Preset
from .config import RunConfig as RunConfig
from .config import TaskConfig as TaskConfig
from .config import TrainConfig as TrainConfig
from .errors import CheckpointError as CheckpointError
from .errors import ConfigError as ConfigError
from .errors import DataError as DataError
from .errors import MamlflowError as MamlflowError
from .errors import NonFiniteError as NonFiniteError
from .errors import PluginError as PluginError
from .errors import ResourceError as ResourceError
from .errors import UnknownNameError as UnknownNameError
from .hookspecs import hookimpl as hookimpl
from .inputs import IMAGE_SUFFIXES as IMAGE_SUFFIXES
from .inputs import ImageInputs as ImageInputs
from .inputs import image_files as image_files
from .inputs import looks_like_html as looks_like_html
from .learner import Learner as Learner
from .learner import ModelPlugin as ModelPlugin
from .metastep import STRATEGIES as STRATEGIES
from .metastep import Data as Data
from .metastep import MetaStep as MetaStep
from .metastep import MetaStepFactory as MetaStepFactory
from .metastep import StepResult as StepResult
from .metastep import Strategy as Strategy
from .nn import BatchStatistics as BatchStatistics
from .nn import batch_statistics_layers as batch_statistics_layers
from .nn import statistics_from_first as statistics_from_first
from .optim import LossAndKL as LossAndKL
from .optim import OuterOptimizer as OuterOptimizer
from .optim import OuterStepReport as OuterStepReport
from .optim import PolicyGradient as PolicyGradient
from .optim import PolicyOuterOptimizer as PolicyOuterOptimizer
from .optim import PolicyTerms as PolicyTerms
from .rl import Policy as Policy
from .rl import RolloutConfig as RolloutConfig
from .rl import RolloutTaskFamily as RolloutTaskFamily
from .rl import discounted_returns as discounted_returns
from .rl import gaussian_kl as gaussian_kl
from .rl import gaussian_log_prob as gaussian_log_prob
from .rl import linear_baseline as linear_baseline
from .rl import per_task as per_task
from .rl import policy_gradient_loss as policy_gradient_loss
from .rl import policy_kl as policy_kl
from .rundir import MetricsRecord as MetricsRecord
from .rundir import RunDir as RunDir
from .rundir import atomic_write as atomic_write
from .rundir import strict_json as strict_json
from .task import SPLITS as SPLITS
from .task import BatchSources as BatchSources
from .task import Metric as Metric
from .task import ModelIO as ModelIO
from .task import Split as Split
from .task import StagedObjective as StagedObjective
from .task import TaskBatch as TaskBatch
from .task import TaskFamily as TaskFamily
from .task import TaskObjective as TaskObjective

__all__ = [
    "IMAGE_SUFFIXES",
    "SAVED_DEFAULT",
    "SPLITS",
    "STRATEGIES",
    "Adam",
    "Adapter",
    "AdapterState",
    "Algorithm",
    "AlgorithmConfig",
    "BatchSources",
    "BatchStatistics",
    "Callback",
    "CallbackConfig",
    "Chain",
    "CheckpointError",
    "ConfigError",
    "Data",
    "DataError",
    "EvalConfig",
    "ImageInputs",
    "InnerConfig",
    "KernelConfig",
    "Learner",
    "LossAndKL",
    "MamlflowError",
    "MetaStep",
    "MetaStepFactory",
    "Metric",
    "MetricsRecord",
    "ModelConfig",
    "ModelIO",
    "ModelPlugin",
    "NonFiniteError",
    "OuterConfig",
    "OuterOptimizer",
    "OuterStepReport",
    "Params",
    "PluginConfig",
    "PluginError",
    "Policy",
    "PolicyGradient",
    "PolicyOuterOptimizer",
    "PolicyTerms",
    "Preset",
    "ResourceError",
    "RolloutConfig",
    "RolloutTaskFamily",
    "RunConfig",
    "RunDir",
    "Scale",
    "Split",
    "StagedObjective",
    "StepResult",
    "Strategy",
    "TaskBatch",
    "TaskConfig",
    "TaskFamily",
    "TaskObjective",
    "TrainConfig",
    "TrainStart",
    "TrainSummary",
    "TrainerControl",
    "UnknownNameError",
    "__version__",
    "adam",
    "apply_updates",
    "atomic_write",
    "batch_statistics_layers",
    "chain",
    "discounted_returns",
    "gaussian_kl",
    "gaussian_log_prob",
    "hookimpl",
    "hookspecs",
    "image_files",
    "linear_baseline",
    "looks_like_html",
    "per_task",
    "policy_gradient_loss",
    "policy_kl",
    "rng",
    "rundir",
    "sgd",
    "statistics_from_first",
    "strict_json",
]
