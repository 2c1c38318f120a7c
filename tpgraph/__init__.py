"""tpgraph: graph-level target propagation without autograd.

Declare a computation graph on networkx (:class:`Graph`), compile it once
into a static plan of Numba kernel calls, and train it with target
propagation — or with backpropagation, the same scheduler with gradient
credit rules — using :class:`Engine`. :class:`SRN` is the paper's unrolled
simple recurrent network (Dai & Chin).
"""

import os as _os
import sys as _sys

# tpgraph's products are small ([20 x 128] @ [128 x 128]): threaded BLAS barely
# helps and, on a busy machine, its spinning threads make every product
# several times slower (PERFORMANCE.md, lesson 6). So unless the user chose a
# thread count, and only if NumPy is not loaded yet, use one BLAS thread.
# Set OPENBLAS_NUM_THREADS (or OMP_NUM_THREADS) yourself to override.
if "numpy" not in _sys.modules and not any(
    v in _os.environ for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
):
    _os.environ["OPENBLAS_NUM_THREADS"] = "1"

from .engine import Engine, StepResult  # noqa: E402
from .errors import (CheckpointError, ConfigError, DataError, DivergenceError, GraphError,
                     MemoryLimitError, TPGraphError)
from .graph import Graph
from .inverse_losses import InverseLoss, get_inverse_loss, known_inverse_losses, register_inverse_loss
from .inverses import InverseKind, get_inverse_kind, known_inverse_kinds, register_inverse_kind
from .memory import MemoryEstimate
from .merges import known_merges, register_merge
from .models.srn import SRN, build_srn
from .nodes import (Activation, Add, CrossEntropy, Dense, Elementwise, IndexInput, Input, Inverse, MSE, Multiply,
                    Scale, SoftmaxOutput)
from .params import ParamStore
from .plan import compile_plan
from .rules import CreditRule, get_rule, known_rules, register_rule

__version__ = "0.1.0"

__all__ = [
    "Activation", "Add", "CheckpointError", "ConfigError", "CreditRule", "CrossEntropy", "DataError", "Dense",
    "DivergenceError",
    "Engine", "Graph", "GraphError", "IndexInput", "Input", "Inverse", "InverseKind", "InverseLoss", "MSE", "MemoryEstimate", "MemoryLimitError",
    "Elementwise", "Multiply", "ParamStore", "SRN", "Scale",
    "SoftmaxOutput", "StepResult", "TPGraphError", "build_srn", "compile_plan", "get_inverse_kind", "get_inverse_loss",
    "get_rule", "known_inverse_kinds", "known_inverse_losses", "known_merges", "known_rules", "register_inverse_kind",
    "register_inverse_loss", "register_merge", "register_rule",
]
