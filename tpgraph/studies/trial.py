"""One trial, as a worker runs it: ordinary trainer runs, one per seed.

:func:`run_trial` is the only function a Dask worker executes. It takes a
:class:`TrialJob` (plain data: the storage URL, the Optuna trial's id, one
resolved run config and run folder per seed) and

1. runs the seeds one after another, each an ordinary :class:`~tpgraph.train.Trainer`
   run writing its run folder; a folder that already holds a finished run is
   read, not run again, and one with a resumable checkpoint is resumed (so a
   trial whose worker died continues where its last checkpoint left it);
2. reports the validation curve to the Optuna trial at step
   ``seed_index * (n_batches + 1) + batch`` and stops the run when the pruner says so;
3. records each seed's value (``seed_values``, ``seeds``), its run folder (``run_dirs``), the worker
   (``worker``) and the runs' statuses and cost (``runs``) as user attributes
   and *tells* the storage the result itself, so that a finished result is in
   the database the moment it exists, whatever happens to the client later.

It never reaches into the engine, and gives the same values wherever it runs
(every random choice comes from the configs' seeds).
"""

from __future__ import annotations

import functools
import math
import os
import socket
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["TrialJob", "run_trial", "open_storage", "aggregate", "curve_value"]

_FINISHED = ("completed", "diverged")


@dataclass(frozen=True)
class TrialJob:
    """Everything a worker needs to run one trial (picklable plain data)."""

    storage: str                      # an RDB URL Optuna accepts
    study_name: str
    trial_id: int
    trial_number: int
    configs: tuple[dict, ...]         # one resolved run config (Config.to_dict()) per seed
    seeds: tuple[int, ...]
    run_dirs: tuple[str, ...]
    objective: str
    aggregate: str
    pruner: tuple                     # (name, options, max_resource, min_resource)
    n_batches: int


def open_storage(url: str):
    """An Optuna RDB storage.

    SQLite files are opened in write-ahead-log mode with ``synchronous =
    NORMAL``: readers (the client, the dashboard) never block the workers'
    writes, and a commit costs no disk flush, yet a process killed at any
    instant loses no committed transaction (only a power failure could lose
    the last ones, never corrupt the file). A writer waits up to two minutes
    for a lock instead of failing. Storages are kept per process and URL.
    """
    import optuna

    if url in _STORAGES:
        return _STORAGES[url]
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        kwargs["engine_kwargs"] = {"creator": functools.partial(_sqlite_connect, url[len("sqlite:///"):])}
    elif url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}
    storage = _STORAGES[url] = optuna.storages.RDBStorage(url, **kwargs)
    return storage


#: One storage per URL and process: opening one checks the schema (about 0.1 s), once per worker is enough.
_STORAGES: dict[str, Any] = {}


def _sqlite_connect(path: str):
    import sqlite3

    conn = sqlite3.connect(path, timeout=120, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def aggregate(values: list[float], how: str) -> float:
    """The trial's value from its seeds' values (a diverged seed counts as the objective's worst value)."""
    if not values:
        return math.nan
    fn = {"mean": statistics.fmean, "median": statistics.median, "min": min, "max": max}[how]
    return float(fn(values))


def curve_value(objective, rows: list[dict]) -> float:
    """The value a pruner sees after these validation rows (best so far, or the latest)."""
    values = [float(r[objective.column]) for r in rows]
    values = [v if math.isfinite(v) else objective.worst for v in values]
    if objective.curve == "current":
        return values[-1]
    return min(values) if objective.direction == "minimize" else max(values)


def _finished_summary(run_dir: Path) -> dict | None:
    from ..train.records import read_summary

    path = run_dir / "summary.json"
    if not path.exists():
        return None
    try:
        summary = read_summary(path)
    except Exception:
        return None
    status = summary.get("status")
    if status in _FINISHED or (status == "aborted" and summary.get("run_dir")
                               and not str(summary.get("reason", "")).startswith("interrupted")):
        return summary
    return None


def _resumable(run_dir: Path) -> bool:
    from ..train.checkpoint import checkpoint_info
    from ..errors import TPGraphError

    try:
        return bool(checkpoint_info(run_dir / "checkpoint")["state"].get("resumable"))
    except TPGraphError:
        return False


def run_trial(job: TrialJob) -> dict:
    """Run one trial on this process and tell its result to the storage; returns the result.

    The returned dict has ``state`` (``complete``, ``pruned`` or ``finished``
    when another process had already told this trial), ``value``,
    ``seed_values``, ``statuses``, ``run_dirs``, ``seconds`` and ``worker``.
    A ``KeyboardInterrupt`` (serial runs: Ctrl-C) leaves the trial running in
    the storage; the next session marks it failed and retries it from its
    checkpoints.
    """
    import optuna
    from optuna.trial import TrialState

    from ..train.config import Config
    from ..train.trainer import Callback, Trainer
    from .spec import OBJECTIVES, make_pruner

    t0 = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    objective = OBJECTIVES[job.objective]
    storage = open_storage(job.storage)
    name, options, max_res, min_res = job.pruner
    study = optuna.load_study(study_name=job.study_name, storage=storage, sampler=optuna.samplers.RandomSampler(),
                              pruner=make_pruner(name, options, max_res, min_res))
    frozen = storage.get_trial(job.trial_id)
    if frozen.state.is_finished():
        return {"state": "finished", "value": frozen.value, "number": job.trial_number,
                "seed_values": frozen.user_attrs.get("seed_values"), "seconds": 0.0}
    trial = optuna.trial.Trial(study, job.trial_id)
    worker = {"host": socket.gethostname(), "pid": os.getpid()}
    trial.set_user_attr("worker", worker)
    trial.set_user_attr("run_dirs", list(job.run_dirs))

    class Pruning(Callback):
        def __init__(self, index: int):
            self.offset = index * (job.n_batches + 1)
            self.pruned = False

        def on_validation(self, trainer, row):
            step = self.offset + int(row["batch"])
            trial.report(curve_value(objective, trainer.state.rows), step)
            if can_prune and step > self.offset and trial.should_prune():
                self.pruned = True
                trainer.request_stop(f"pruned at batch {row['batch']}")

    can_prune = name != "none"  # without a pruner the curve is still reported (for the dashboard), never judged
    seed_values, statuses, ms = [], [], []
    pruned = False
    for i, (cfg, run_dir) in enumerate(zip(job.configs, job.run_dirs)):
        folder = Path(run_dir)
        summary = _finished_summary(folder)
        cb = Pruning(i)
        if summary is None:
            if _resumable(folder):
                trainer = Trainer.resume(folder, callbacks=[cb])
            else:
                trainer = Trainer(Config.from_dict(cfg), folder, callbacks=[cb])
            summary = trainer.run()
            if summary["status"] == "aborted" and str(summary.get("reason", "")).startswith("interrupted"):
                raise KeyboardInterrupt(f"trial {job.trial_number} interrupted")
        pruned = cb.pruned or str(summary.get("reason", "")).startswith("pruned")
        seed_values.append(objective.from_summary(summary))
        statuses.append(summary["status"] if not pruned else "pruned")
        ms.append(summary.get("ms_per_batch"))
        if pruned:
            break
    trial.set_user_attr("seed_values", seed_values)
    trial.set_user_attr("seeds", list(job.seeds[:len(seed_values)]))
    seconds = time.perf_counter() - t0
    # one write for the rest (every attribute is a transaction)
    trial.set_user_attr("runs", {"statuses": statuses, "ms_per_batch": [m for m in ms if m is not None],
                                 "seconds": seconds})
    value = aggregate(seed_values, job.aggregate)
    if pruned:
        study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
        state = "pruned"
    else:
        study.tell(trial, value, skip_if_finished=True)
        state = "complete"
    return {"state": state, "value": value, "number": job.trial_number, "seed_values": seed_values,
            "statuses": statuses, "run_dirs": list(job.run_dirs), "seconds": seconds, "worker": worker}
