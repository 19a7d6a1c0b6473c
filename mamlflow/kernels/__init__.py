"""Meta-step kernels: batched and compiled ``torch.func`` paths and their reference loop."""

from __future__ import annotations

from ._maml import (
    STRATEGIES as STRATEGIES,
)
from ._maml import (
    AdaptFn as AdaptFn,
)
from ._maml import (
    MetaStep as MetaStep,
)
from ._maml import (
    StepResult as StepResult,
)
from ._maml import (
    Strategy as Strategy,
)
from ._maml import (
    exact_float32 as exact_float32,
)
from ._maml import (
    make_adapt as make_adapt,
)
from ._maml import (
    make_adapt_curve as make_adapt_curve,
)
from ._maml import (
    make_meta_step as make_meta_step,
)
from ._select import AUTO_COMPILE_MIN_SECONDS as AUTO_COMPILE_MIN_SECONDS
from ._select import COMPILED_STRATEGIES as COMPILED_STRATEGIES
from ._select import MetaStepFactory as MetaStepFactory
from ._select import Selection as Selection
from ._select import clear_selection_cache as clear_selection_cache
from ._select import select_meta_step as select_meta_step
