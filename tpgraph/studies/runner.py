"""Running a study: asking Optuna for trials, running them on Dask, resuming.

The study folder
    ``spec.json`` (the spec as given, and the storage URL), ``study.db`` (the
    SQLite storage, unless ``storage`` names another database), and
    ``trials/GROUP/trial-NNNN/seed-S/``: one ordinary run folder per seed of
    every trial. ``tpgraph sweep report`` adds ``report/``.

The loop (client side)
    One Optuna study per group, all in one storage. While a worker slot is
    free, the groups take turns: a group with a retry waiting, or with fewer
    trials started than its budget, *asks* its sampler for a trial (TPE with
    the constant liar, so concurrent trials spread out), turns the trial's
    parameters into one run config per seed, and submits
    :func:`~tpgraph.studies.trial.run_trial` to the executor. The worker tells
    the storage the result; the client only reads it back, updates the
    progress line and fills the slot again.

Failures
    A trial whose worker died (Dask's ``KilledWorker``; the local cluster
    allows no silent re-run) or whose code raised is marked ``FAIL`` with the
    error as a user attribute and *retried once*: the same parameters are
    enqueued as a new trial that reuses the failed trial's run folders, so it
    resumes from their last checkpoints. Trials left ``RUNNING`` by a client
    that died are treated the same way when the study is run again; finished
    trials are never run again. Every finished result is in the database
    before the client hears of it.

Executors
    ``LocalCluster`` (default): one single-threaded worker process per core
    on this machine; ``scheduler="tcp://HOST:PORT"``: an existing cluster;
    ``scheduler="serial"``: in this process, one trial at a time (for
    debugging; the values are the same).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import ConfigError, TPGraphError
from ..progress import format_duration
from .spec import StudySpec, group_slug, make_sampler, parse_spec
from .trial import TrialJob, open_storage, run_trial

__all__ = ["Study", "run_study", "SerialExecutor", "DaskExecutor", "make_executor", "StudyProgress"]

SPEC_FILE = "spec.json"


# ---------------------------------------------------------------------- executors
class _Done:
    """A finished call, shaped like the part of a future the loop uses."""

    def __init__(self, fn, arg):
        try:
            self._result, self._error = fn(arg), None
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - recorded as the trial's failure
            self._result, self._error = None, exc

    def result(self):
        if self._error is not None:
            raise self._error
        return self._result


class SerialExecutor:
    """Runs each trial in this process when it is submitted (one slot)."""

    slots = 1
    dashboard = None

    def submit(self, fn, arg, key: str):
        return _Done(fn, arg)

    def wait_one(self, futures):
        return [next(iter(futures))]

    def close(self):
        pass


class DaskExecutor:
    """Trials on Dask distributed: a new ``LocalCluster`` or an existing scheduler."""

    def __init__(self, scheduler: str | None = None, workers: int | None = None):
        import dask
        from distributed import Client, LocalCluster

        self.cluster = None
        if scheduler is None:
            n = workers or os.cpu_count() or 1
            # a worker that dies takes its trial with it: report it (KilledWorker) instead of re-running it silently
            with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
                self.cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                                            dashboard_address="127.0.0.1:0", silence_logs=40)
            self.client = Client(self.cluster)
        else:
            try:
                self.client = Client(scheduler, timeout="20s")
            except (OSError, TimeoutError) as exc:
                raise ConfigError(f"cannot reach the Dask scheduler at {scheduler!r}: {exc}") from None
        self.slots = max(1, sum(self.client.nthreads().values()))
        try:
            self.dashboard = self.client.dashboard_link
        except Exception:  # no dashboard served (e.g. bokeh missing on the scheduler)
            self.dashboard = None

    def submit(self, fn, arg, key: str):
        self.slots = max(1, sum(self.client.nthreads().values()))
        return self.client.submit(fn, arg, key=key, pure=False, retries=0)

    def wait_one(self, futures):
        from distributed import wait

        try:
            return list(wait(list(futures), return_when="FIRST_COMPLETED").done)
        except (OSError, TimeoutError) as exc:  # the scheduler went away (CommClosedError is an OSError)
            raise TPGraphError(f"lost the Dask scheduler ({type(exc).__name__}: {exc}); every finished trial is "
                               f"in the storage: rerun the same command to resume the study") from None

    def close(self):
        try:
            self.client.close()
        finally:
            if self.cluster is not None:
                self.cluster.close()


def make_executor(scheduler: str | None = None, workers: int | None = None):
    """``None``: a LocalCluster; ``"serial"``: this process; otherwise a scheduler address."""
    if scheduler == "serial":
        return SerialExecutor()
    return DaskExecutor(scheduler, workers)


# ---------------------------------------------------------------------- progress
class StudyProgress:
    """One status line: trials done / running / pruned / failed, best so far, time.

    ``mode``: ``bar`` redraws one line on stderr, ``lines`` prints a line per
    finished trial, ``off`` prints nothing; ``auto`` is ``bar`` on a terminal
    and ``off`` otherwise.
    """

    def __init__(self, mode: str = "auto", stream=None):
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "off"
        self.mode = mode
        self.t0 = time.perf_counter()
        self._last = 0.0

    def update(self, counts: Mapping[str, int], total: int, best: str, remaining: float | None,
               event: str | None = None) -> None:
        if self.mode == "off":
            return
        elapsed = time.perf_counter() - self.t0
        left = "?" if remaining is None else format_duration(remaining)
        text = (f"trials {counts['done']}/{total} done, {counts['running']} running, {counts['pruned']} pruned, "
                f"{counts['failed']} failed | best {best} | {format_duration(elapsed)} elapsed, ~{left} left")
        if self.mode == "lines":
            if event:
                print(f"{event}: {text}", file=self.stream, flush=True)
            return
        now = time.perf_counter()
        if event or now - self._last > 0.5:
            self._last = now
            print("\r" + text[:160].ljust(160), end="", file=self.stream, flush=True)

    def note(self, text: str) -> None:
        """A message worth a line of its own (unless the progress is off)."""
        if self.mode != "off":
            print(("\n" if self.mode == "bar" and self._last else "") + text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.mode == "bar":
            print(file=self.stream, flush=True)


# ---------------------------------------------------------------------- the study
@dataclass
class _Group:
    values: dict
    index: int
    study: Any
    budget: int
    slug: str


@dataclass
class StudyResult:
    """What :meth:`Study.run` returns: per group, the best trial, and the counts."""

    folder: Path
    groups: list = field(default_factory=list)     # dicts: group, best_value, best_params, counts
    elapsed_s: float = 0.0


class Study:
    """A study folder: its spec, its storage, its trials' run folders.

    Parameters
    ----------
    spec : StudySpec
    folder : path
        Created if missing. A folder that already holds a study must hold the
        same spec (it is then resumed); another spec is refused.
    storage : str, optional
        Any RDB URL Optuna accepts; default ``sqlite:///FOLDER/study.db``.
        Remembered in the folder, so a rerun finds it.
    """

    def __init__(self, spec: StudySpec, folder: str | Path, storage: str | None = None):
        self.spec = spec
        self.folder = Path(folder).resolve()
        meta_path = self.folder / SPEC_FILE
        if meta_path.exists():
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"study folder {str(self.folder)!r}: {SPEC_FILE} cannot be read ({exc})") from None
            try:
                recorded = parse_spec(meta["spec"], name=meta.get("name"), root=self.folder)
            except (ConfigError, KeyError):
                recorded = None
            if recorded is None or not spec.same_study(recorded):
                raise ConfigError(f"study folder {str(self.folder)!r} holds another study's spec; resume it with "
                                  f"`tpgraph sweep resume {self.folder}` or choose another --out")
            if storage is not None and storage != meta.get("storage"):
                raise ConfigError(f"study folder {str(self.folder)!r} uses the storage {meta.get('storage')!r}, "
                                  f"not {storage!r}")
            self.storage_url = meta["storage"]
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.storage_url = storage or f"sqlite:///{self.folder / 'study.db'}"
            from ..train.records import atomic_write_json
            atomic_write_json(meta_path, {"name": spec.name, "storage": self.storage_url,
                                          "spec": _jsonable(spec.source)})
        self._storage = None

    @classmethod
    def open(cls, folder: str | Path) -> "Study":
        """The study of an existing folder (its recorded spec and storage)."""
        folder = Path(folder)
        meta_path = folder / SPEC_FILE
        if not meta_path.is_file():
            raise ConfigError(f"{str(folder)!r} is not a study folder (no {SPEC_FILE})")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            spec = parse_spec(meta["spec"], name=meta["name"], root=folder)
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"study folder {str(folder)!r}: {SPEC_FILE} is unreadable ({exc})") from None
        return cls(spec, folder)

    @property
    def storage(self):
        if self._storage is None:
            self._storage = open_storage(self.storage_url)
        return self._storage

    def optuna_studies(self) -> list[_Group]:
        """One Optuna study per group (created on first use), with its budget."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        out = []
        for index, values in enumerate(self.spec.group_values()):
            name = self.spec.optuna_name(values)
            study = optuna.create_study(study_name=name, storage=self.storage,
                                        direction=self.spec.objective.direction,
                                        sampler=make_sampler(self.spec, values, index), load_if_exists=True)
            resumed = len(study.get_trials(deepcopy=False))
            if resumed:
                study = optuna.load_study(study_name=name, storage=self.storage,
                                          sampler=make_sampler(self.spec, values, index, resumed))
            if "group" not in study.user_attrs:
                study.set_user_attr("group", values)
                study.set_user_attr("objective", self.spec.objective.name)
                study.set_user_attr("aggregate", self.spec.aggregate)
                study.set_user_attr("seeds", list(self.spec.seeds))
                study.set_user_attr("folder", str(self.folder))
            out.append(_Group(values, index, study, self.spec.trials_for(values), group_slug(values)))
        return out

    # ------------------------------------------------------------------ jobs
    def _job(self, group: _Group, trial) -> TrialJob:
        spec = self.spec
        params = {p.key: p.suggest(trial) for p in spec.params_for(group.values)}
        retry_dirs = trial.user_attrs.get("resume_dirs")
        base = self.folder / "trials" / group.slug / f"trial-{trial.number:04d}"
        dirs = tuple(retry_dirs) if retry_dirs else tuple(str(base / f"seed-{s}") for s in spec.seeds)
        configs = []
        for s in spec.seeds:
            cfg = spec.config_for(group.values, params, seed=s).to_dict()
            cfg["output"]["plots"] = False  # the study's report draws the curves
            configs.append(cfg)
        return TrialJob(storage=self.storage_url, study_name=group.study.study_name, trial_id=trial._trial_id,
                        trial_number=trial.number, configs=tuple(configs), seeds=tuple(spec.seeds), run_dirs=dirs,
                        objective=spec.objective.name, aggregate=spec.aggregate, pruner=spec.pruner_args(),
                        n_batches=spec.base.protocol.n_batches)

    def _fail_and_retry(self, group: _Group, number: int, reason: str) -> None:
        """Mark trial ``number`` failed (if it is not finished) and enqueue its one retry."""
        from optuna.trial import TrialState

        frozen = group.study.get_trials(deepcopy=False)[number]
        if frozen.state.is_finished():
            return
        self.storage.set_trial_user_attr(frozen._trial_id, "error", reason[:2000])
        self.storage.set_trial_state_values(frozen._trial_id, TrialState.FAIL)
        if frozen.user_attrs.get("retry_of") is None:
            group.study.enqueue_trial(frozen.params, user_attrs={
                "retry_of": number, "resume_dirs": frozen.user_attrs.get("run_dirs")}, skip_if_exists=False)

    def _recover(self, groups: list[_Group]) -> int:
        """Trials a dead session left running: failed, and retried once. Returns how many."""
        from optuna.trial import TrialState

        n = 0
        for g in groups:
            for t in g.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                self._fail_and_retry(g, t.number, "its session stopped while it ran (client, worker or "
                                                  "scheduler died, or the study was interrupted)")
                n += 1
        return n

    # ------------------------------------------------------------------ counting
    @staticmethod
    def _counts(groups: list[_Group]) -> dict:
        from optuna.trial import TrialState

        c = {"done": 0, "running": 0, "pruned": 0, "failed": 0, "waiting": 0, "started": 0}
        for g in groups:
            for t in g.study.get_trials(deepcopy=False):
                if t.user_attrs.get("retry_of") is None:
                    c["started"] += 1
                if t.state == TrialState.COMPLETE:
                    c["done"] += 1
                elif t.state == TrialState.PRUNED:
                    c["done"] += 1
                    c["pruned"] += 1
                elif t.state == TrialState.FAIL:
                    c["failed"] += 1
                elif t.state == TrialState.RUNNING:
                    c["running"] += 1
                elif t.state == TrialState.WAITING:
                    c["waiting"] += 1
        return c

    @staticmethod
    def _needs(g: _Group) -> bool:
        from optuna.trial import TrialState

        trials = g.study.get_trials(deepcopy=False)
        if any(t.state == TrialState.WAITING for t in trials):
            return True
        return sum(1 for t in trials if t.user_attrs.get("retry_of") is None) < g.budget

    def _best_text(self, groups: list[_Group]) -> str:
        best = None
        for g in groups:
            try:
                v = g.study.best_value
            except ValueError:
                continue
            if best is None or self.spec.objective.better(v, best):
                best = v
        return "-" if best is None else f"{best:.4g}"

    # ------------------------------------------------------------------ running
    def run(self, executor=None, *, progress: StudyProgress | None = None,
            on_event: Callable[[str], None] | None = None) -> StudyResult:
        """Run the study to its budget (resuming whatever is already in the storage).

        ``executor``: from :func:`make_executor` (default: a new LocalCluster,
        closed at the end). ``on_event`` receives one line per started,
        finished or failed trial.
        """
        t0 = time.perf_counter()
        groups = self.optuna_studies()
        recovered = self._recover(groups)
        own = executor is None
        executor = executor or make_executor()
        progress = progress or StudyProgress("off")
        say = on_event or (lambda line: None)
        if recovered:
            text = f"{recovered} trial(s) left running by an earlier session: marked failed, retried once"
            say(text)
            progress.note(text)
        total = sum(g.budget for g in groups)
        pending: dict = {}
        durations: list[float] = []
        turn = 0
        try:
            while True:
                while len(pending) < executor.slots:
                    ready = [g for g in groups if self._needs(g)]
                    if not ready:
                        break
                    g = ready[turn % len(ready)]
                    turn += 1
                    trial = g.study.ask()
                    job = self._job(g, trial)
                    key = f"trial-{g.slug}-{trial.number}-{os.getpid()}-{time.time_ns()}"
                    pending[executor.submit(run_trial, job, key)] = (g, trial.number, time.perf_counter())
                    say(f"started {g.slug} trial {trial.number}")
                if not pending:
                    break
                for fut in executor.wait_one(pending):
                    g, number, started = pending.pop(fut)
                    try:
                        res = fut.result()
                        durations.append(time.perf_counter() - started)
                        event = f"{g.slug} trial {number} {res['state']}: {self.spec.objective.name} {res['value']:.4g}"
                    except KeyboardInterrupt:
                        raise
                    except BaseException as exc:  # noqa: BLE001 - a worker died, or the trial's code raised
                        reason = f"{type(exc).__name__}: {exc}"
                        self._fail_and_retry(g, number, reason)
                        event = f"{g.slug} trial {number} failed ({reason[:200]})"
                    say(event)
                    counts = self._counts(groups)
                    left = total - counts["done"]
                    remaining = (None if not durations else
                                 left * (sum(durations) / len(durations)) / max(1, executor.slots))
                    progress.update(counts, total, self._best_text(groups), remaining, event)
        finally:
            if own:
                executor.close()
            progress.close()
        return self.result(time.perf_counter() - t0)

    def result(self, elapsed: float = 0.0) -> StudyResult:
        """The best trial of every group, from the storage."""
        from optuna.trial import TrialState

        out = StudyResult(self.folder, elapsed_s=elapsed)
        for g in self.optuna_studies():
            complete = g.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            row = {"group": g.values, "slug": g.slug, "study": g.study.study_name,
                   "counts": {s.name.lower(): len(g.study.get_trials(deepcopy=False, states=(s,)))
                              for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}}
            if complete:
                best = g.study.best_trial
                row.update(best_number=best.number, best_value=best.value, best_params=dict(best.params),
                           seed_values=best.user_attrs.get("seed_values"), run_dirs=best.user_attrs.get("run_dirs"))
            out.groups.append(row)
        return out


def run_study(spec: StudySpec | Mapping, folder: str | Path, *, storage: str | None = None,
              scheduler: str | None = None, workers: int | None = None, progress: str = "off") -> StudyResult:
    """Create or resume the study in ``folder`` and run it (Python entry point of ``tpgraph sweep``).

    >>> result = run_study(spec, "studies/lr", scheduler="serial")   # doctest: +SKIP
    >>> result.groups[0]["best_params"]                               # doctest: +SKIP
    """
    if not isinstance(spec, StudySpec):
        spec = parse_spec(spec)
    study = Study(spec, folder, storage)
    executor = make_executor(scheduler, workers)
    try:
        return study.run(executor, progress=StudyProgress(progress))
    finally:
        executor.close()


def _jsonable(data: Any) -> Any:
    """The spec as JSON keeps it (floats and ints as they are; TOML dates as text)."""
    return json.loads(json.dumps(data, default=str))


def fmt_value(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4g}"
