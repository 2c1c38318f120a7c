"""Training runs: configuration, the trainer, run records and checkpoints.

>>> from tpgraph.train import load_config, Trainer, new_run_dir
>>> cfg = load_config("examples/configs/quick.toml", ["protocol.n_batches=2000"])  # doctest: +SKIP
>>> summary = Trainer(cfg, new_run_dir(cfg)).run()                                # doctest: +SKIP

The command line (``tpgraph train``, ``compare``, ``plot``) is a thin layer
over these.
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .config import (SECTIONS, Config, MethodConfig, ModelConfig, OptimizerConfig, OutputConfig, ProtocolConfig,
                     TaskConfig, apply_overrides, load_config, to_toml)
from .records import METRIC_COLUMNS, RunFiles, load_npz, read_metrics_csv, read_summary
from .trainer import Callback, Trainer, TrainState, build_model, build_task, load_run_config, new_run_dir

__all__ = [
    "Callback", "Config", "METRIC_COLUMNS", "MethodConfig", "ModelConfig", "OptimizerConfig", "OutputConfig",
    "ProtocolConfig", "RunFiles", "SECTIONS", "TaskConfig", "TrainState", "Trainer", "apply_overrides",
    "build_model", "build_task", "load_checkpoint", "load_config", "load_npz", "load_run_config", "new_run_dir",
    "read_metrics_csv", "read_summary", "save_checkpoint", "to_toml",
]
