"""tpgraph: graph-level target propagation without autograd.

Declare a computation graph on networkx (:class:`Graph`), compile it once
into a static plan of Numba kernel calls, and train it with target
propagation — or with backpropagation, the same scheduler with gradient
credit rules — using :class:`Engine`. :class:`SRN` is the paper's unrolled
simple recurrent network (Dai & Chin).
"""

from .engine import Engine, StepResult
from .errors import (CheckpointError, ConfigError, DataError, DivergenceError, GraphError,
                     TPGraphError)
from .graph import Graph
from .merges import known_merges, register_merge
from .models.srn import SRN, build_srn
from .nodes import Add, CrossEntropy, Dense, IndexInput, Input, Inverse, MSE, SoftmaxOutput
from .params import ParamStore
from .plan import compile_plan

__version__ = "0.1.0"

__all__ = [
    "Add", "CheckpointError", "ConfigError", "CrossEntropy", "DataError", "Dense", "DivergenceError",
    "Engine", "Graph", "GraphError", "IndexInput", "Input", "Inverse", "MSE", "ParamStore", "SRN",
    "SoftmaxOutput", "StepResult", "TPGraphError", "build_srn", "compile_plan", "known_merges",
    "register_merge",
]
