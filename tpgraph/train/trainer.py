"""The trainer: the paper's protocol around :class:`tpgraph.SRN`.

Protocol
    Training batches are drawn on the fly from one seeded generator (the
    *data stream*); a fixed validation set is made once from its own seed.
    TP's first ``protocol.warmup`` batches train only the inverse (counted in
    ``n_batches``; BPTT has no warm-up). With ``protocol.inverse_steps = k``
    each batch gives the inverse ``k`` updates, warm-up batches too: the
    batch's step, then ``k - 1`` inverse-only steps on the same batch (its
    reported loss is the first step's). Every ``val_every`` batches, at batch
    0 and at the end, a *validation point* records one row of
    :data:`~tpgraph.train.records.METRIC_COLUMNS` and updates the best values
    (lowest validation loss, highest whole-sequence accuracy). TP and BPTT
    built from the same config differ only in ``method.name``: same
    initialisation, same batches in the same order.

State
    Everything that decides the rest of a run is in :class:`TrainState` (the
    loop's bookkeeping, the metrics rows) plus the model's parameters, the
    optimisers' buffers, the engine's step count and noise generator, the data
    generator and the best weights. :meth:`Trainer.checkpoint_payload` turns it
    into arrays and JSON-able scalars and :meth:`Trainer.resume` restores it,
    so that a run killed and resumed ends with the same weights and metrics,
    bit for bit, as one never interrupted (only ``elapsed_s`` differs).

Stopping
    ``completed``: all batches done, or early stopping (the reason says so).
    ``diverged``: a non-finite loss, weight or validation loss
    (:class:`~tpgraph.errors.DivergenceError`, naming the batch and the
    quantity); no checkpoint is written after it, so the last good one stays.
    ``aborted``: the spectral radius passed ``max_spectral_radius``, or the
    user interrupted (Ctrl-C, SIGTERM: the trainer finishes the current batch,
    saves a checkpoint and stops; such a run can be resumed).

Per batch the loop does the step, two additions and two integer tests; the
callbacks' ``on_batch`` is called with the batch number and loss (the
progress bar redraws at most ten times a second). Everything else happens at
validation points and checkpoints.
"""

from __future__ import annotations

import copy
import math
import re
import signal
import threading
import time
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import CheckpointError, ConfigError, DivergenceError, TPGraphError
from ..memory import MemoryEstimate, check_memory
from ..merges import clipped_merge
from ..models.srn import SRN
from ..rules import get_rule
from ..tasks import Task, make_task
from . import checkpoint as ckpt
from .stability import Stability, enabled as _stability_enabled
from .config import Config, load_config, to_toml
from .curriculum import curriculum_stages
from .records import (METRIC_COLUMNS, RunFiles, atomic_write_json, atomic_write_text, read_summary,
                      save_weights, write_metrics_csv)

__all__ = ["Trainer", "TrainState", "Callback", "build_task", "build_model", "new_run_dir", "estimate_run_memory",
           "check_run_memory"]

_DATA_STREAM = 0x7D47A  # spawn key that separates the data stream from the initialisation's seed


class Callback:
    """Hooks called by :meth:`Trainer.run`; override any of them."""

    def on_compile(self, trainer: "Trainer", stage: str, done: int, total: int) -> None:
        """While the model's engine is built, before :meth:`on_start` (``stage``: ``"declaring"``,
        ``"compiling"``; ``done`` of ``total``). Worth showing for long sequences."""

    def on_start(self, trainer: "Trainer") -> None:
        """Before the first batch of this session."""

    def on_batch(self, trainer: "Trainer", batch: int, loss: float) -> None:
        """After every training batch (keep it cheap)."""

    def on_validation(self, trainer: "Trainer", row: dict) -> None:
        """After every validation point, with its metrics row."""

    def on_checkpoint(self, trainer: "Trainer", path: Path) -> None:
        """After a checkpoint was saved."""

    def on_end(self, trainer: "Trainer", summary: dict) -> None:
        """When the run stops, for any reason, with its summary."""


@dataclass
class TrainState:
    """The loop's bookkeeping; with the model's state it decides the rest of the run."""

    batch: int = 0                      # training batches done
    loss_sum: float = 0.0               # sum of training losses since the last validation point
    loss_count: int = 0
    best_val_loss: float | None = None
    best_val_loss_batch: int | None = None
    best_seq_acc: float | None = None
    best_seq_acc_batch: int | None = None
    best_step_acc: float | None = None
    since_best: int = 0                 # validation points since the best validation loss improved
    elapsed_s: float = 0.0              # wall-clock seconds of the sessions before this one
    eval_s: float = 0.0                 # seconds in validation, checkpoints and records
    sessions: int = 1
    checkpoint_batch: int | None = None
    status: str = "running"
    reason: str | None = None
    rows: list = field(default_factory=list)

    def scalars(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "rows"}


# ---------------------------------------------------------------------- building blocks
def build_task(config: Config) -> Task:
    """The task of a config."""
    return make_task(config.task.name, **config.task.task_options())


def build_model(config: Config, task: Task) -> SRN:
    """The SRN of a config for ``task`` (TP or BPTT, the same initialisation for both).

    The task decides the model's ends: one-hot or real inputs, a softmax or a
    linear (squared-error) output, and for a many-to-one task (adding,
    temporal order) one output at the last step whatever ``model.many_to_many``
    says.
    """
    m, me, o, p = config.model, config.method, config.optimizer, config.protocol
    regression = task.output_kind == "regression"
    extra = {"tolerance": task.tolerance} if regression else {}
    return SRN(task.n_in, m.n_hidden, task.n_out, method=me.name,
               many_to_many=m.many_to_many and not task.many_to_one, dtype=m.dtype,
               seed=p.seed, alpha=me.alpha, optimizer=o.name, lr_f=o.lr_f, lr_g=o.lr_g, lr_y=o.lr_y,
               noise_sigma=me.noise_sigma, merge=me.merge if me.clip is None else clipped_merge(me.clip),
               credit=me.credit, reduction=me.reduction,
               fast_tanh=m.fast_tanh, optimizer_options=o.options(), inputs=task.input_kind,
               output="linear" if regression else "softmax", memory_limit=p.memory_limit,
               inverse_loss=me.inverse_loss, truncate=me.truncate, inverse=me.inverse,
               inverse_reg=me.inverse_reg, **extra)


def data_stream(seed: int) -> np.random.Generator:
    """The generator of the training batches for ``protocol.seed``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_DATA_STREAM,)))


def new_run_dir(config: Config, label: str | None = None) -> Path:
    """Create a fresh run folder under ``output.runs_dir``.

    Without ``output.name`` the folder is named ``TASK-METHOD-YYYYmmdd-HHMMSS``
    (``label`` in place of the method, e.g. ``compare``)
    (``-2``, ``-3``, ... appended if taken). A named folder that already holds
    files is refused: resume it (``--resume``) or choose another name.
    """
    root = Path(config.output.runs_dir)
    name = config.output.name
    if name is not None:
        if "/" in name or "\\" in name or name in ("", ".", ".."):
            raise ConfigError(f"output.name must be a plain folder name, got {name!r}")
        path = root / name
        if path.exists() and any(path.iterdir()):
            raise ConfigError(f"run folder {str(path)!r} already exists and is not empty; choose another "
                              f"output.name (--name) or continue it with: tpgraph train --resume {path}")
        path.mkdir(parents=True, exist_ok=True)
        return path
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = f"{config.task.name}-{label or config.method.name}-{stamp}"
    root.mkdir(parents=True, exist_ok=True)
    for i in range(1, 1000):
        path = root / (base if i == 1 else f"{base}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise ConfigError(f"cannot find a free run folder name under {str(root)!r}")


def _group_factor(n: int, most: int = 10) -> int:
    """How many validation batches one forward pass takes: the largest divisor ``k <= most`` of ``n``."""
    return max(d for d in range(1, min(n, most) + 1) if n % d == 0)


def _group_batches(a: np.ndarray, most: int = 10) -> np.ndarray:
    """``[n, L, B, ...]`` -> ``[n / k, L, k B, ...]`` for the largest divisor ``k <= most`` of ``n``.

    The same sequences in fewer, wider forward passes (about twice as fast to
    validate); the metrics are means over all sequences either way. Trailing
    axes (real inputs' features, regression targets' components) ride along.
    """
    n, L, B = a.shape[:3]
    rest = a.shape[3:]
    k = _group_factor(n, most)
    order = (0, 2, 1, 3) + tuple(range(4, 4 + len(rest)))
    return np.ascontiguousarray(a.reshape(n // k, k, L, B, *rest).transpose(order).reshape(n // k, L, k * B, *rest))


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return float(sum(values) / len(values)) if values else math.nan


def estimate_run_memory(config: Config, task: Task | None = None, model: SRN | None = None) -> MemoryEstimate:
    """What the run of ``config`` will allocate, known before anything of its size is built.

    The model's engine at the training batch size (graph, plan and
    buffers: :meth:`tpgraph.SRN.estimate_memory`), the buffers of the
    validation passes (several validation batches per pass), and the
    validation set (kept as drawn and grouped into passes).
    """
    task = task or build_task(config)
    model = model or build_model(config, task)
    p = config.protocol
    L, B = task.length, p.batch_size
    wide = _group_factor(p.val_batches) * B
    train = model.estimate_memory(L, B)
    val = model.estimate_memory(L, wide) if wide != B else MemoryEstimate()
    real_in = getattr(task, "input_kind", "index") != "index"
    real_out = getattr(task, "output_kind", "class") == "regression"
    per_seq_in = L * (task.n_in if real_in else 1) * 8
    per_seq_out = getattr(task, "label_length", L) * (task.n_out if real_out else 1) * 8
    data: dict[str, int] = {}
    for real, per_seq in ((real_in, per_seq_in), (real_out, per_seq_out)):
        key = "float64" if real else "int64"
        # the validation set as drawn and grouped into passes, and one training batch
        data[key] = data.get(key, 0) + (2 * p.val_batches + 1) * B * per_seq
    return train + MemoryEstimate(val.buffers) + MemoryEstimate(data)


def check_run_memory(config: Config, task: Task | None = None, model: SRN | None = None) -> MemoryEstimate:
    """Refuse the run of ``config`` (:class:`~tpgraph.errors.MemoryLimitError`) if it would exceed the memory limit.

    Called by :class:`Trainer` before it builds anything of the run's size, and
    by studies for every group before the first trial.
    """
    task = task or build_task(config)
    model = model or build_model(config, task)
    p = config.protocol
    estimate = estimate_run_memory(config, task, model)
    check_memory(estimate, f"the run ({task.name}, {config.method.name}) at length {task.length}, batch size "
                 f"{p.batch_size}, {p.val_batches} validation batches", p.memory_limit,
                 hint="Use shorter sequences, a smaller batch or fewer validation batches.")
    return estimate


# ---------------------------------------------------------------------- the trainer
class Trainer:
    """Trains one SRN on one task with the paper's protocol, writing a run folder.

    Parameters
    ----------
    config : Config
        The resolved configuration.
    run_dir : path, optional
        The run folder (see :mod:`tpgraph.train.records`); ``None`` writes
        nothing (no records, no checkpoints): for scripts and tests.
    callbacks : iterable of Callback
        Progress bars, loggers, ...

    Examples
    --------
    >>> from tpgraph.train import Config, Trainer, apply_overrides
    >>> cfg = apply_overrides(Config(), ["protocol.n_batches=20", "protocol.warmup=5",
    ...                                  "protocol.val_batches=2", "protocol.val_every=10",
    ...                                  "model.n_hidden=8", "task.delay=2"])
    >>> summary = Trainer(cfg).run()
    >>> summary["status"], summary["batches_done"]
    ('completed', 20)
    """

    def __init__(self, config: Config, run_dir: str | Path | None = None, *, callbacks: Iterable[Callback] = ()):
        self.config = config
        self.task = build_task(config)
        self.model = build_model(config, self.task)
        self.callbacks = list(callbacks)
        p = config.protocol
        # refuse a run that cannot fit before building anything of its size (seconds per 10^4 steps)
        check_run_memory(config, self.task, self.model)
        hooks = self._hooks("on_compile")
        progress = (lambda stage, done, total: [fn(self, stage, done, total) for fn in hooks]) if hooks else None
        self.engine = self.model.engine(self.task.length, p.batch_size, progress=progress)
        self.data_rng = data_stream(config.protocol.seed)
        #: protocol.curriculum_*: the stages (batch ranges and their tasks); one, the task itself, when off.
        self.stages = curriculum_stages(self.task, p.n_batches, p.curriculum_start, p.curriculum_step,
                                        p.curriculum_fraction)
        self.val_inputs, self.val_labels = self.task.validation_set(p.val_seed, p.val_batches, p.batch_size)
        self._val_x, self._val_y = _group_batches(self.val_inputs), _group_batches(self.val_labels)
        self.state = TrainState()
        self.best_params: dict[str, np.ndarray] | None = None
        self.files = RunFiles(run_dir) if run_dir is not None else None
        # the inverse-only warm-up: TP with a rule that has an inverse to train (not BPTT, not fa, not an
        # analytic inverse, which has nothing to train: all batches then train the forward weights, as with fa)
        self.warmup = p.warmup if config.method.trains_inverse() else 0
        #: Inverse updates per batch (``protocol.inverse_steps``), warm-up or not: the batch's own step, then
        #: ``inverse_steps - 1`` inverse-only steps on the same batch (each with a fresh forward pass and fresh
        #: noise). 1 where there is no inverse to train (BPTT, fa, the analytic inverse).
        has_inverse = config.method.trains_inverse()
        self.inverse_steps = p.inverse_steps if has_inverse else 1
        # the model reports losses summed over the batch under reduction "sum"; records are per sample
        total = config.method.reduction == "sum"
        self._loss_scale = 1.0 / p.batch_size if total else 1.0
        self._val_loss_scale = 1.0 / self._val_x.shape[2] if total else 1.0
        self._stop_reason: str | None = None
        self._session_start = time.perf_counter()
        self._divergence: DivergenceError | None = None
        self._records_only = False
        #: The stability remedies (protocol.rollback, spectral_limit, lr_warmup: tpgraph.train.stability), or None.
        self.stability = Stability(p, self.model, self.engine, self.warmup) if _stability_enabled(p) else None
        #: Columns of metrics.csv: METRIC_COLUMNS, and the stability counters when a remedy is on.
        self.metric_columns = METRIC_COLUMNS + (self.stability.columns if self.stability is not None else ())
        #: Alignment with BPTT every ``protocol.alignment_every`` batches (0: off): rows of alignment.csv.
        self.alignment_every = p.alignment_every
        self.alignment_columns: tuple[str, ...] = self._alignment_columns() if p.alignment_every else ()
        self.alignment_rows: list[dict] = []
        self._alignment_s = 0.0
        self._alignment_calls = 0
        #: Draw the plots at the end (``output.plots``; a display choice, so a resumed run may turn it off).
        self.draw_plots = config.output.plots
        if self.files is not None:
            self.files.root.mkdir(parents=True, exist_ok=True)
            if not self.files.config.exists():
                atomic_write_text(self.files.config, to_toml(config, header=(
                    "The resolved configuration of this run (every key, defaults included).\n"
                    "Rerun it with: tpgraph train " + str(self.files.config))))

    def estimate_memory(self) -> MemoryEstimate:
        """What this run will allocate, known before anything of its size is built (:func:`estimate_run_memory`)."""
        return estimate_run_memory(self.config, self.task, self.model)

    def __repr__(self):
        return (f"Trainer({self.config.summary_line()}, batch={self.state.batch}, status={self.state.status!r}, "
                f"run_dir={str(self.files.root) if self.files else None!r})")

    # ------------------------------------------------------------------ properties
    @property
    def baseline(self) -> float | None:
        """The memoryless baseline loss of the task (None if it has none)."""
        return self.task.baseline_loss

    @property
    def elapsed(self) -> float:
        """Wall-clock seconds of the run so far (all sessions)."""
        return self.state.elapsed_s + (time.perf_counter() - self._session_start)

    def _hooks(self, name: str) -> list:
        """The bound ``name`` methods of the callbacks that define it (other than the no-op default)."""
        out = []
        for cb in self.callbacks:
            fn = getattr(type(cb), name, None)
            if fn is not None and fn is not getattr(Callback, name):
                out.append(getattr(cb, name))
        return out

    # ------------------------------------------------------------------ the loop
    def request_stop(self, reason: str) -> None:
        """Ask the loop to stop after the current batch (thread- and signal-safe)."""
        self._stop_reason = reason

    def run(self) -> dict:
        """Train until the budget is spent or a stop rule fires; returns the summary.

        The run folder is complete when this returns (also after divergence,
        an abort or an interrupt). Interrupts (SIGINT, SIGTERM) are handled
        only when called from the main thread.
        """
        s = self.state
        if s.status != "running":
            if self._records_only:  # stopped, but killed before its records were complete: write them
                self._records_only = False
                summary = self.finish()
                for fn in self._hooks("on_end"):
                    fn(self, summary)
                return summary
            raise TPGraphError(f"this run has already stopped (status {s.status!r}); nothing to run")
        self._session_start = time.perf_counter()
        handlers = self._install_signal_handlers()
        for fn in self._hooks("on_start"):
            fn(self)
        # overflow on the way to divergence is reported once, as a DivergenceError, not as numpy warnings
        errstate = np.errstate(over="ignore", invalid="ignore", divide="ignore")
        errstate.__enter__()
        try:
            if not s.rows:
                self._validation_point()
            if self._stop_reason is None and s.status == "running":
                self._loop()
            if s.status == "running":
                if self._stop_reason is not None:
                    self._set_status("aborted", self._stop_reason)
                    self._save_checkpoint(resumable=True)
                else:
                    if s.reason is None:
                        s.reason = f"trained all {self.config.protocol.n_batches} batches"
                    self._set_status("completed", s.reason)
                    self._save_checkpoint(resumable=False)
            elif s.status != "diverged":
                self._save_checkpoint(resumable=False)
        except DivergenceError as exc:
            self._divergence = exc
            self._set_status("diverged", str(exc))
        finally:
            errstate.__exit__(None, None, None)
            self._restore_signal_handlers(handlers)
        summary = self.finish()
        for fn in self._hooks("on_end"):
            fn(self, summary)
        return summary

    def _loop(self) -> None:
        p = self.config.protocol
        s = self.state
        step = self.model.train_step
        stages = self.stages
        rng = self.data_rng
        B, n, warmup, val_every = p.batch_size, p.n_batches, self.warmup, p.val_every
        every = self.config.output.checkpoint_every if self.files is not None else 0
        on_batch = self._hooks("on_batch")
        scale = self._loss_scale
        align = self.alignment_every
        extra = self.inverse_steps - 1
        stab = self.stability
        rollback = stab is not None and stab.rollback is not None
        pre = stab.before_batch if stab is not None and stab.scheduled else None  # protocol.lr_warmup, lr_decay
        post = stab.after_batch if stab is not None and stab.spectral_limit is not None else None
        k = 0  # protocol.curriculum_*: the stage of the next batch (batches only go forward, resumed or not)
        while s.batch < n and self._stop_reason is None:
            while s.batch >= stages[k].last:
                k += 1
            stage = stages[k]
            x, y = stage.task.batch(rng, B)
            # alignment.csv has a column per step of the task's own length: measured in its last stage only
            if align and (s.batch + 1) % align == 0 and stage.task is self.task:
                self._measure_alignment(x, y, s.batch + 1)  # before the step, on its batch and parameters
            if pre is not None:
                pre(s.batch)
            try:
                loss = step(x, y, update_forward=s.batch >= warmup) * scale
                for _ in range(extra):  # protocol.inverse_steps: more inverse-only updates on this batch
                    step(x, y, update_forward=False)
            except DivergenceError as exc:
                what = re.sub(r"^step \d+: ", "", str(exc))
                err = DivergenceError(f"diverged at batch {s.batch + 1}: {what}", step=s.batch + 1,
                                      quantity=exc.quantity)
                if not rollback:
                    raise err from exc
                s.batch += 1  # protocol.rollback: the batch counts (the budget does not grow), its loss does not
                if not self._roll_back(str(err), s.batch):
                    return
            else:
                s.batch += 1
                s.loss_sum += loss
                s.loss_count += 1
                if post is not None:
                    post(s.batch)  # protocol.spectral_limit
                for fn in on_batch:
                    fn(self, s.batch, loss)
            if s.batch % val_every == 0 or s.batch == n:
                self._validation_point()
                if s.status != "running":
                    return
            if every and s.batch % every == 0 and s.batch < n:
                self._save_checkpoint(resumable=True)

    # ------------------------------------------------------------------ alignment
    def _alignment_columns(self) -> tuple[str, ...]:
        """``batch``, one angle per forward group, the mean over the hidden steps, and one per step."""
        groups = tuple(f"angle_{g}" for g in self.engine.plan.forward_groups)
        steps = tuple(f"angle_h_{t}" for t in range(1, self.task.length + 1))
        return ("batch",) + groups + ("angle_h_mean",) + steps

    def _measure_alignment(self, x, y, batch: int) -> dict:
        """Angles (degrees) of this batch's updates and hidden displacements with BPTT's gradient."""
        t0 = time.perf_counter()
        a = self.model.alignment(x, y)
        row: dict[str, float] = {"batch": batch}
        for g in self.engine.plan.forward_groups:
            row[f"angle_{g}"] = a.groups.get(g, math.nan)
        steps = a.nodes_with_prefix("h_")
        row["angle_h_mean"] = _mean(v for v in steps if math.isfinite(v))
        for t, v in enumerate(steps, 1):
            row[f"angle_h_{t}"] = v
        self.alignment_rows.append(row)
        dt = time.perf_counter() - t0
        self._alignment_s += dt
        self._alignment_calls += 1
        self.state.eval_s += dt  # not training time: ms_per_batch stays the cost of training
        return row

    def _write_alignment(self) -> None:
        if self.files is not None and self.alignment_every:
            write_metrics_csv(self.files.root / "alignment.csv", self.alignment_rows, self.alignment_columns)

    # ------------------------------------------------------------------ validation points
    def _local_loss(self) -> float:
        """Mean over the hidden steps of ``1/2 ||h_hat_t - h_t||^2`` per sample at the last batch."""
        if self.config.method.name != "tp" or self.state.batch <= self.warmup:
            return math.nan
        eng = self.model.last_trained  # a curriculum's earlier stages train engines of other lengths
        if eng is None:
            return math.nan
        local = eng.local_losses()
        B = self.config.protocol.batch_size
        return _mean(v / B for k, v in local.items() if k.startswith("h_"))

    def evaluate(self, *, per_position: bool = False) -> dict:
        """The model as it is now on the fixed validation set: ``loss`` (as reported), ``step_acc``, ``seq_acc``.

        With ``per_position``, also ``position_acc``, the accuracy at each
        output step (:meth:`tpgraph.SRN.evaluate`). Changes no state.
        """
        extra = {"per_position": True} if per_position else {}  # a model without the option still validates
        ev = self.model.evaluate(self._val_x, self._val_y, **extra)
        return {**ev, "loss": float(ev["loss"]) * self._val_loss_scale}

    def _validation_point(self) -> dict:
        t0 = time.perf_counter()
        s = self.state
        tp = self.config.method.name == "tp"
        # read the last training batch's inverse and local losses before evaluate() reuses the buffers
        recon = self.model.reconstruction_loss() if tp and s.batch > 0 else math.nan
        local = self._local_loss()
        ev = self.evaluate()
        train_loss = s.loss_sum / s.loss_count if s.loss_count else math.nan
        row = {
            "batch": s.batch,
            "train_loss": train_loss,
            "val_loss": ev["loss"],
            "step_acc": float(ev["step_acc"]),
            "seq_acc": float(ev["seq_acc"]),
            "spectral_radius_W_h": self.model.spectral_radius("W_h"),
            "spectral_radius_V_h": self.model.spectral_radius("V_h"),
            "reconstruction_loss": recon,
            "local_loss": local,
            "elapsed_s": self.elapsed,
        }
        s.rows.append(row)
        s.loss_sum, s.loss_count = 0.0, 0
        stab = self.stability
        if stab is not None and stab.rollback is not None and stab.has_snapshot:
            problem = stab.problem(row, s.best_val_loss)
            if problem is not None:  # protocol.rollback: back to the last healthy state (or stop)
                s.since_best += 1
                self._roll_back(f"validation point at batch {s.batch}: {problem}", s.batch)
                stab.annotate(row)
                return self._end_validation_point(row, t0)
        if not math.isfinite(row["val_loss"]):
            raise DivergenceError(f"diverged at batch {s.batch}: the validation loss is not finite "
                                  f"({row['val_loss']})", step=s.batch, quantity="validation loss")
        if s.best_val_loss is None or row["val_loss"] < s.best_val_loss:
            s.best_val_loss, s.best_val_loss_batch, s.since_best = row["val_loss"], s.batch, 0
            self.best_params = self.model.params.to_dict()
        else:
            s.since_best += 1
        if s.best_seq_acc is None or row["seq_acc"] > s.best_seq_acc:
            s.best_seq_acc, s.best_seq_acc_batch = row["seq_acc"], s.batch
        if s.best_step_acc is None or row["step_acc"] > s.best_step_acc:
            s.best_step_acc = row["step_acc"]
        bound = self.config.protocol.max_spectral_radius
        if bound is not None:
            for name in ("W_h", "V_h"):
                rho = row[f"spectral_radius_{name}"]
                if name not in self.model.params:  # no V_h with the analytic inverse (its radius is NaN)
                    continue
                if not rho <= bound:
                    self._set_status("aborted", f"the spectral radius of {name} is {rho:.4g} at batch {s.batch}, "
                                                f"above protocol.max_spectral_radius = {bound:g}")
                    break
        patience = self.config.protocol.early_stop_patience
        if s.status == "running" and patience is not None and s.since_best >= patience:
            s.reason = (f"early stop at batch {s.batch}: no better validation loss for {patience} validation "
                        f"points (best {s.best_val_loss:.6g} at batch {s.best_val_loss_batch})")
            self._set_status("completed", s.reason)
        if stab is not None:
            if stab.rollback is not None and s.status == "running":
                stab.healthy(row, s.batch)  # the snapshot a later rollback returns to
            stab.annotate(row)
        return self._end_validation_point(row, t0)

    def _end_validation_point(self, row: dict, t0: float) -> dict:
        s = self.state
        if self.files is not None:
            write_metrics_csv(self.files.metrics, s.rows, self.metric_columns)
            self._write_alignment()
        s.eval_s += time.perf_counter() - t0
        for fn in self._hooks("on_validation"):
            fn(self, row)
        return row

    def _roll_back(self, reason: str, done: int) -> bool:
        """``protocol.rollback``: restore the last healthy state and lower the rates; False: the run stopped."""
        stab = self.stability
        if stab.roll_back(self.state.batch, reason, done):
            return True
        self._set_status("aborted", f"{reason}; the protocol.max_rollbacks = {stab.max_rollbacks} rollbacks are "
                                    f"spent: stopped, with the last healthy state (batch "
                                    f"{stab.state.snapshot_batch}) restored")
        return False

    def _set_status(self, status: str, reason: str | None) -> None:
        self.state.status = status
        self.state.reason = reason

    # ------------------------------------------------------------------ signals
    def _install_signal_handlers(self):
        if threading.current_thread() is not threading.main_thread():
            return None
        previous = {}

        def handler(signum, frame):
            name = signal.Signals(signum).name
            if self._stop_reason is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
            what = "Ctrl-C" if signum == signal.SIGINT else name
            self.request_stop(f"interrupted ({what}) at batch {self.state.batch}")

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, handler)
            except (ValueError, OSError):
                pass
        return previous

    @staticmethod
    def _restore_signal_handlers(previous) -> None:
        for sig, h in (previous or {}).items():
            signal.signal(sig, h)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_payload(self, resumable: bool = True) -> tuple[dict, dict]:
        """The complete state as ``(arrays, scalars)`` for :func:`tpgraph.train.checkpoint.save_checkpoint`."""
        s = self.state
        arrays: dict[str, np.ndarray] = {f"param/{k}": v for k, v in self.model.params.items()}
        opt_t = {}
        for g, opt in self.engine.optimizers.items():
            st = opt.state_dict()
            opt_t[g] = int(st.pop("t"))
            arrays.update({f"opt/{g}/{k}": v for k, v in st.items()})
        if self.best_params is not None:
            arrays.update({f"best/{k}": v for k, v in self.best_params.items()})
        table = np.array([[float(r[c]) for c in METRIC_COLUMNS] for r in s.rows], dtype=np.float64)
        arrays["metrics"] = table.reshape(len(s.rows), len(METRIC_COLUMNS))
        scalars = {
            "config": self.config.to_dict(),
            "train": s.scalars(),
            "resumable": bool(resumable),
            "metric_columns": list(METRIC_COLUMNS),
            "optimizer_steps": opt_t,
            "engine_step_count": int(self.engine.step_count),
            "data_rng": self.data_rng.bit_generator.state,
            "noise_rng": self.engine.rng.bit_generator.state,
            "dtype": self.model.dtype.name,
        }
        if self.alignment_every:
            cols = self.alignment_columns
            table = np.array([[float(r.get(c, math.nan)) for c in cols] for r in self.alignment_rows],
                             dtype=np.float64)
            arrays["alignment"] = table.reshape(len(self.alignment_rows), len(cols))
            scalars["alignment_columns"] = list(cols)
        if self.stability is not None:
            self.stability.save(arrays, scalars, s.rows)
        return arrays, scalars

    def _save_checkpoint(self, resumable: bool) -> Path | None:
        if self.files is None:
            return None
        t0 = time.perf_counter()
        s = self.state
        s.checkpoint_batch = s.batch
        elapsed, s.elapsed_s = s.elapsed_s, self.elapsed  # the saved state carries the time so far
        try:
            arrays, scalars = self.checkpoint_payload(resumable)
        finally:
            s.elapsed_s = elapsed
        path = ckpt.save_checkpoint(self.files.checkpoint_dir, arrays=arrays, state=scalars,
                                    shapes={k: v.shape for k, v in self.model.params.items()}, batch=s.batch)
        if s.status == "running":
            atomic_write_json(self.files.summary, self.summary())
        s.eval_s += time.perf_counter() - t0
        for fn in self._hooks("on_checkpoint"):
            fn(self, path)
        return path

    @classmethod
    def resume(cls, run_dir: str | Path, *, callbacks: Iterable[Callback] = ()) -> "Trainer":
        """Rebuild a trainer from the last checkpoint of ``run_dir``, ready to :meth:`run` on.

        Raises
        ------
        CheckpointError
            If the checkpoint is missing, corrupted, of another version or
            model shape, or the run cannot be continued (it finished or
            diverged). Nothing is half-loaded: either a complete trainer is
            returned or nothing.
        """
        files = RunFiles(run_dir)
        if not files.root.is_dir():
            raise CheckpointError(f"run folder {str(files.root)!r} not found")
        info = ckpt.checkpoint_info(files.checkpoint_dir)
        try:
            summary = read_summary(files.summary) if files.summary.exists() else {}
        except TPGraphError:
            summary = {}
        if summary.get("status") == "diverged":
            raise CheckpointError(f"run {str(files.root)!r} diverged ({summary.get('reason')}); resuming it would "
                                  f"diverge again the same way: start a new run with other settings")
        resumable = bool(info["state"].get("resumable", False))
        train = info["state"].get("train", {})
        if not resumable and summary.get("status") == train.get("status"):
            raise CheckpointError(f"run {str(files.root)!r} has finished (status {train.get('status')!r}: "
                                  f"{train.get('reason')}); nothing to resume")
        # not resumable, but the summary is not final: the run stopped and was killed while writing its
        # records; the trainer is restored as it stopped and run() only writes the records.
        try:
            config = Config.from_dict(info["state"]["config"])
        except (ConfigError, KeyError) as exc:
            raise CheckpointError(f"checkpoint of {str(files.root)!r} holds an invalid configuration: {exc}") from None
        trainer = cls(config, files.root, callbacks=callbacks)
        doc, arrays = ckpt.load_checkpoint(files.checkpoint_dir,
                                           {k: v.shape for k, v in trainer.model.params.items()})
        trainer._restore(doc["state"], arrays, str(files.checkpoint_dir), resumable)
        trainer._records_only = not resumable
        return trainer

    def _restore(self, scalars: dict, arrays: dict, source: str, resumable: bool = True) -> None:
        """Apply a verified checkpoint to this (fresh) trainer; validates everything before changing anything."""
        def fail(what):
            return CheckpointError(f"checkpoint {source!r}: {what}")

        dtype = self.model.dtype
        params = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
        best = {k[len("best/"):]: v for k, v in arrays.items() if k.startswith("best/")}
        for name, group in (("parameters", params), ("best parameters", best)):
            for k, v in group.items():
                if v.dtype != dtype:
                    raise fail(f"{name} {k!r} have dtype {v.dtype}, the model uses {dtype}")
        if best and set(best) != set(self.model.params):
            raise fail("the best parameters do not cover the model's groups")
        if scalars.get("metric_columns") != list(METRIC_COLUMNS):
            raise fail(f"metric columns {scalars.get('metric_columns')} differ from this version's")
        table = arrays.get("metrics")
        if table is None or table.ndim != 2 or table.shape[1] != len(METRIC_COLUMNS) or table.dtype != np.float64:
            raise fail("the metrics table is missing or malformed")
        train = scalars.get("train")
        known = {f.name for f in fields(TrainState)} - {"rows"}
        if not isinstance(train, dict) or set(train) != known:
            raise fail("the training state is missing or has other fields than this version's")
        opt_states = {}
        steps = scalars.get("optimizer_steps", {})
        if set(steps) != set(self.engine.optimizers):
            raise fail(f"optimiser groups {sorted(steps)} differ from the model's {sorted(self.engine.optimizers)}")
        for g, opt in self.engine.optimizers.items():
            st = {"t": steps[g]}
            st.update({k.split("/", 2)[2]: v for k, v in arrays.items() if k.startswith(f"opt/{g}/")})
            for k, v in st.items():
                if k != "t" and v.shape != self.model.params[g].shape:
                    raise fail(f"optimiser buffer {g}/{k} has shape {v.shape}, the parameter {self.model.params[g].shape}")
            opt_states[g] = st
        data_rng = np.random.default_rng()
        noise_rng = np.random.default_rng()
        try:
            data_rng.bit_generator.state = scalars["data_rng"]
            noise_rng.bit_generator.state = scalars["noise_rng"]
        except (KeyError, TypeError, ValueError) as exc:
            raise fail(f"a random generator's state is invalid ({exc})") from None
        align_table = None
        if self.alignment_every:
            if scalars.get("alignment_columns") != list(self.alignment_columns):
                raise fail(f"alignment columns {scalars.get('alignment_columns')} differ from this run's "
                           f"{list(self.alignment_columns)}")
            align_table = arrays.get("alignment")
            if align_table is None or align_table.ndim != 2 or align_table.shape[1] != len(self.alignment_columns):
                raise fail("the alignment table is missing or malformed")
        # validate the optimiser states on throw-away copies before touching the live ones
        for g, st in opt_states.items():
            copy.copy(self.engine.optimizers[g]).load_state_dict(dict(st))
        stability = self.stability.prepare_restore(scalars, arrays, fail) if self.stability is not None else None
        # everything checked: apply
        self.model.params.load(params, source=source)
        for g, st in opt_states.items():
            self.engine.optimizers[g].load_state_dict(st)
        self.engine.rng.bit_generator.state = noise_rng.bit_generator.state
        self.data_rng.bit_generator.state = data_rng.bit_generator.state
        self.engine.step_count = int(scalars["engine_step_count"])
        self.best_params = {k: v.copy() for k, v in best.items()} if best else None
        state = TrainState(**train)
        state.rows = [{c: (int(v) if c == "batch" else float(v)) for c, v in zip(METRIC_COLUMNS, r)}
                      for r in table.tolist()]
        state.sessions += 1
        if resumable:
            state.status, state.reason = "running", None
        self.state = state
        if stability is not None:
            stability(state.rows)
        if align_table is not None:
            self.alignment_rows = [{c: (int(v) if c == "batch" else float(v)) for c, v in zip(self.alignment_columns, r)}
                                   for r in align_table.tolist()]

    # ------------------------------------------------------------------ records
    def summary(self) -> dict:
        """Status, best and final values, the baseline and timing, as written to ``summary.json``."""
        s = self.state
        final = dict(s.rows[-1]) if s.rows else {}
        elapsed = self.elapsed
        train_s = max(elapsed - s.eval_s, 0.0)
        baseline = self.baseline
        out: dict[str, Any] = {
            "status": s.status,
            "reason": s.reason,
            "task": {"name": self.task.name, **self.task.options()},
            "method": self.config.method.name,
            "baseline_loss": baseline,
            "n_batches": self.config.protocol.n_batches,
            "warmup": self.warmup,
            "batches_done": s.batch,
            "best": {
                "val_loss": s.best_val_loss,
                "val_loss_batch": s.best_val_loss_batch,
                "seq_acc": s.best_seq_acc,
                "seq_acc_batch": s.best_seq_acc_batch,
                "step_acc": s.best_step_acc,
            },
            "final": final,
            "beats_baseline": (None if baseline is None or s.best_val_loss is None
                               else bool(s.best_val_loss < baseline)),
            "success_acc": self.task.success_accuracy,
            "solved": (None if self.task.success_accuracy is None or s.best_seq_acc is None
                       else bool(s.best_seq_acc >= self.task.success_accuracy)),
            "elapsed_s": elapsed,
            "train_s": train_s,
            "ms_per_batch": 1e3 * train_s / s.batch if s.batch else None,
            "sessions": s.sessions,
            "checkpoint_batch": s.checkpoint_batch,
            "seed": self.config.protocol.seed,
            "n_params": int(sum(v.size for v in self.model.params.values())),
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if self.alignment_every:
            out["alignment"] = {
                "every": self.alignment_every, "measurements": len(self.alignment_rows),
                "ms_per_measurement": (1e3 * self._alignment_s / self._alignment_calls
                                       if self._alignment_calls else None),
                "file": "alignment.csv"}
        if self.stability is not None:
            out.update(self.stability.summary(s.batch))
        if len(self.stages) > 1:  # protocol.curriculum_*: which batches ran at which horizon
            out["curriculum"] = {"option": self.task.horizon,
                                 "stages": [{"value": st.value, "batches": [st.first + 1, st.last]}
                                            for st in self.stages]}
        if self._divergence is not None:
            out["divergence"] = {"batch": self._divergence.step, "quantity": self._divergence.quantity}
        from .. import __version__
        out["tpgraph_version"] = __version__
        return out

    def finish(self) -> dict:
        """Write the records of the run (metrics, weights, summary, plots); returns the summary."""
        t0 = time.perf_counter()
        s = self.state
        summary = self.summary()
        if self.files is None:
            return summary
        f = self.files
        write_metrics_csv(f.metrics, s.rows, self.metric_columns)
        self._write_alignment()
        if s.status == "diverged":
            summary["weights"] = None
            note = "weights.npz not written: the weights are not finite."
            if s.checkpoint_batch is not None:
                note += f" The last good state is the checkpoint at batch {s.checkpoint_batch}."
            if self.best_params is not None:
                note += " The weights of the best validation loss are in weights_best.npz."
            summary["note"] = note
        else:
            save_weights(f.weights, self.model.params)
            summary["weights"] = f.weights.name
        if self.best_params is not None:
            save_weights(f.weights_best, self.best_params)
            summary["weights_best"] = f.weights_best.name
        plots = []
        if self.draw_plots and s.rows:
            try:
                from ..plots import plot_run
                plots = [p.name for p in plot_run(f.root, summary)]
                if self.alignment_rows:
                    from ..plots import plot_alignment
                    plots.append(plot_alignment(f.root / "alignment.csv", f.root / "alignment.png",
                                                title=self.config.summary_line()).name)
            except Exception as exc:  # a plot must never lose the run's records
                summary["plot_error"] = f"{type(exc).__name__}: {exc}"
        summary["plots"] = plots
        summary["run_dir"] = str(f.root)
        s.eval_s += time.perf_counter() - t0
        atomic_write_json(f.summary, summary)
        return summary


def load_run_config(run_dir: str | Path) -> Config:
    """The resolved configuration recorded in a run folder."""
    return load_config(RunFiles(run_dir).config)
