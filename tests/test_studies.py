"""Studies: spec validation, serial vs Dask equivalence, resume after a killed client or worker, storage."""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")
pytest.importorskip("distributed")

from optuna.trial import TrialState  # noqa: E402

from tpgraph.errors import ConfigError  # noqa: E402
from tpgraph.studies import SerialExecutor, Study, make_executor, parse_spec, write_report  # noqa: E402
from tpgraph.studies.spec import OBJECTIVES  # noqa: E402
from tpgraph.studies.trial import aggregate, curve_value  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def tiny_spec(trials=2, seeds=1, n_batches=40, sampler="random", pruner="none", name="t", **study):
    return {
        "study": {"name": name, "trials": trials, "seeds": seeds, "sampler": sampler, "pruner": pruner, **study},
        "base": {"task": {"delay": 2}, "model": {"n_hidden": 8, "dtype": "float64"},
                 "protocol": {"n_batches": n_batches, "warmup": 10, "val_batches": 2, "val_every": 10,
                              "batch_size": 4},
                 "output": {"checkpoint_every": 20}},
        "space": {"optimizer.lr_f": {"type": "log_uniform", "low": 1e-4, "high": 1e-1},
                  "method.alpha": {"type": "log_uniform", "low": 0.1, "high": 2.0, "when": {"method.name": "tp"}}},
    }


def values_by_params(study: Study) -> dict:
    out = {}
    for g in study.optuna_studies():
        for t in g.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            out[(g.slug, tuple(sorted(t.params.items())))] = t.value
    return out


# ---------------------------------------------------------------------- spec errors
@pytest.mark.parametrize("mutate, words", [
    (lambda d: d["space"].update({"optimizer.lr_ff": {"type": "log_uniform", "low": 1e-4, "high": 1e-2}}),
     ["optimizer.lr_ff", "optimizer.lr_f"]),
    (lambda d: d["space"].update({"optimizer.lr_f": {"type": "log_uniform", "low": 1e-2, "high": 1e-4}}),
     ["optimizer.lr_f", "low", "high"]),
    (lambda d: d["space"].update({"optimizer.lr_f": {"type": "log_uniform", "low": 0.0, "high": 1e-2}}),
     ["optimizer.lr_f", "log", "low > 0"]),
    (lambda d: d["space"].update({"optimizer.lr_f": {"type": "uniform", "low": 0.0, "high": 1e-2}}),
     ["optimizer.lr_f", "0.0", "> 0"]),
    (lambda d: d["space"].update({"model.n_hidden": {"type": "uniform", "low": 4, "high": 16}}),
     ["model.n_hidden", "int"]),
    (lambda d: d["space"].update({"method.merge": {"type": "categorical", "choices": ["linear", "nope"]}}),
     ["method.merge", "nope"]),
    (lambda d: d["space"].update({"optimizer.lr_f": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}),
     ["optimizer.lr_f", "type", "log_uniform"]),
    (lambda d: d["space"].update({"optimizer.lr_f": {"type": "log_uniform", "lo": 1e-4, "high": 1e-2}}),
     ["lo", "low"]),
    (lambda d: d["study"].update({"trails": 3}), ["study.", "trails", "trials"]),
    (lambda d: d["study"].update({"objective": "best_loss"}), ["study.objective", "best_val_loss"]),
    (lambda d: d["study"].update({"pruner": "medain"}), ["study.pruner", "median"]),
    (lambda d: d["study"].update({"pruner": "median", "pruner_options": {"n_startup": 3}}),
     ["pruner_options", "n_startup"]),
    (lambda d: d["study"].update({"seeds": 0}), ["study.seeds"]),
    (lambda d: d.update({"groups": {"task.delay": [2, 0]}}), ["task.delay", "0"]),
    (lambda d: d.update({"groups": {"method.nam": ["tp"]}}), ["method.nam", "method.name"]),
    (lambda d: d["base"]["protocol"].update({"n_batch": 3}), ["protocol.n_batch"]),
    (lambda d: d.update({"spaces": {}}), ["spaces", "space"]),
    (lambda d: d["study"].update({"sampler": "grid"}), ["optimizer.lr_f", "grid"]),
])
def test_spec_errors_name_the_key(mutate, words):
    data = tiny_spec()
    mutate(data)
    with pytest.raises(ConfigError) as info:
        parse_spec(data)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_spec_groups_when_and_configs():
    data = tiny_spec()
    data["groups"] = {"method.name": ["tp", "bptt"], "task.delay": [2, 3]}
    spec = parse_spec(data)
    groups = spec.group_values()
    assert groups == [{"method.name": "tp", "task.delay": 2}, {"method.name": "tp", "task.delay": 3},
                      {"method.name": "bptt", "task.delay": 2}, {"method.name": "bptt", "task.delay": 3}]
    assert [p.key for p in spec.params_for(groups[0])] == ["optimizer.lr_f", "method.alpha"]
    assert [p.key for p in spec.params_for(groups[2])] == ["optimizer.lr_f"]
    cfg = spec.config_for(groups[3], {"optimizer.lr_f": 0.01}, seed=7)
    assert (cfg.method.name, cfg.task.delay, cfg.optimizer.lr_f, cfg.protocol.seed) == ("bptt", 3, 0.01, 7)
    assert spec.optuna_name(groups[1]) == "t/name-tp_delay-3"


def test_grid_budget_is_capped_at_the_grid():
    data = tiny_spec(trials=50, sampler="grid")
    data["space"] = {"optimizer.lr_f": {"type": "log_uniform", "low": 1e-4, "high": 1e-1, "grid": [1e-3, 1e-2]},
                     "model.n_hidden": {"type": "int", "low": 4, "high": 8, "step": 4}}
    spec = parse_spec(data)
    assert spec.trials_for({}) == 4


def test_aggregate_and_curve():
    assert aggregate([1.0, 3.0], "mean") == 2.0
    assert aggregate([1.0, 3.0, 10.0], "median") == 3.0
    assert aggregate([1.0, math.inf], "mean") == math.inf
    obj = OBJECTIVES["best_val_loss"]
    rows = [{"val_loss": 3.0}, {"val_loss": 1.0}, {"val_loss": 2.0}]
    assert curve_value(obj, rows) == 1.0
    assert curve_value(OBJECTIVES["final_val_loss"], rows) == 2.0
    assert curve_value(OBJECTIVES["best_seq_acc"], [{"seq_acc": 0.1}, {"seq_acc": 0.5}, {"seq_acc": 0.2}]) == 0.5
    assert OBJECTIVES["final_val_loss"].from_summary({"final": {"val_loss": math.nan}}) == math.inf


# ---------------------------------------------------------------------- running
@pytest.fixture(scope="module")
def serial_values(tmp_path_factory):
    """The two-trial, two-group study run serially in this process: the reference values."""
    data = tiny_spec(trials=2, seeds=2)
    data["groups"] = {"method.name": ["tp", "bptt"]}
    folder = tmp_path_factory.mktemp("serial") / "study"
    study = Study(parse_spec(data), folder)
    result = study.run(SerialExecutor())
    assert all(g["counts"]["complete"] == 2 for g in result.groups)
    return data, folder, values_by_params(study)


def test_serial_study_records_everything(serial_values):
    data, folder, values = serial_values
    assert len(values) == 4 and all(math.isfinite(v) for v in values.values())
    study = Study.open(folder)
    # the SQLite file holds every finished trial, read through Optuna's own API (as optuna-dashboard does)
    url = f"sqlite:///{folder / 'study.db'}"
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage=url))
    assert names == ["t/name-bptt", "t/name-tp"]
    for name in names:
        s = optuna.load_study(study_name=name, storage=url)
        trials = s.get_trials(states=(TrialState.COMPLETE,))
        assert len(trials) == 2
        for t in trials:
            assert len(t.user_attrs["seed_values"]) == 2
            assert t.value == pytest.approx(sum(t.user_attrs["seed_values"]) / 2, rel=1e-12)
            assert t.intermediate_values, "the validation curve was reported to the pruner"
            for d in t.user_attrs["run_dirs"]:  # every seed left an ordinary run folder
                summary = json.loads((Path(d) / "summary.json").read_text())
                assert summary["status"] == "completed"
                assert (Path(d) / "metrics.csv").exists()
    # rerunning a finished study runs nothing and changes nothing
    before = values_by_params(study)
    study.run(SerialExecutor())
    assert values_by_params(study) == before
    rep = write_report(study)
    assert {p.name for p in rep["files"]} >= {"best.csv", "best.md", "name-tp_objective.png", "name-tp_curves.png"}
    assert "best_val_loss" in (folder / "report" / "best.md").read_text()
    from tpgraph.studies.report import trial_table
    rows = trial_table(study)  # every finished trial, with its spread over the seeds
    assert len(rows) == 4 and {r["method.name"] for r in rows} == {"tp", "bptt"}
    assert sorted(r["best_val_loss"] for r in rows) == sorted(values.values())
    for r in rows:
        assert r["sd"] is not None and r["sd"] >= 0 and len(r["seed_values"].split()) == 2
    assert len((folder / "report" / "trials.csv").read_text().splitlines()) == 5


def test_local_cluster_gives_the_serial_values(serial_values, tmp_path):
    data, _, reference = serial_values
    study = Study(parse_spec(copy.deepcopy(data)), tmp_path / "study")
    executor = make_executor(None, workers=2)
    try:
        assert executor.slots == 2
        study.run(executor)
    finally:
        executor.close()
    assert values_by_params(study) == reference  # bit for bit


def test_another_spec_in_the_same_folder_is_refused(serial_values):
    data, folder, _ = serial_values
    other = copy.deepcopy(data)
    other["study"]["trials"] = 3
    with pytest.raises(ConfigError, match="another study's spec"):
        Study(parse_spec(other), folder)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_spec(path: Path, data: dict) -> Path:
    """A spec as TOML (the few shapes tiny_spec uses)."""
    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{json.dumps(k)} = {val(x)}" for k, x in v.items()) + " }"
        return repr(v)

    lines = ["[study]"] + [f"{k} = {val(v)}" for k, v in data["study"].items()]
    for section, values in data["base"].items():
        lines += [f"[base.{section}]"] + [f"{k} = {val(v)}" for k, v in values.items()]
    for table in ("space", "groups"):
        if table in data:
            lines += [f"[{table}]"] + [f"{json.dumps(k)} = {val(v)}" for k, v in data[table].items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_dask_cli_scheduler_and_workers(serial_values, tmp_path):
    """A scheduler and two workers started with Dask's own commands (loopback), used through --scheduler."""
    data, _, reference = serial_values
    spec_file = _write_spec(tmp_path / "t.toml", data)
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    bindir = Path(sys.executable).parent
    dask_cmd = [str(bindir / "dask")]  # Dask's own command line, installed with distributed
    procs = [subprocess.Popen([*dask_cmd, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                              env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)]
    try:
        for _ in range(2):
            procs.append(subprocess.Popen([*dask_cmd, "worker", address, "--nthreads", "1", "--host", "127.0.0.1",
                                           "--no-dashboard"], env=_env(), stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, cwd=tmp_path))
        from distributed import Client
        deadline = time.time() + 60
        while True:
            try:
                with Client(address, timeout="5s") as c:
                    if len(c.scheduler_info()["workers"]) == 2:
                        break
            except OSError:
                pass
            assert time.time() < deadline, "the Dask workers did not come up"
            time.sleep(0.5)
        out = tmp_path / "study"
        run = subprocess.run([sys.executable, "-m", "tpgraph", "sweep", str(spec_file), "--out", str(out),
                              "--scheduler", address, "--quiet"], env=_env(), capture_output=True, text=True,
                             timeout=300, cwd=tmp_path)
        assert run.returncode == 0, run.stderr
        assert "best_val_loss" in run.stdout
    finally:
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
    assert values_by_params(Study.open(out)) == reference


def _states(folder: Path) -> dict:
    url = f"sqlite:///{folder / 'study.db'}"
    out = {}
    try:
        for s in optuna.get_all_study_summaries(storage=url):
            study = optuna.load_study(study_name=s.study_name, storage=url)
            for t in study.get_trials(deepcopy=False):
                out[(s.study_name, t.number)] = t
    except Exception:  # the file or its tables are not there yet
        return {}
    return out


def test_killed_client_resumes_without_rerunning_finished_trials(tmp_path):
    data = tiny_spec(trials=6, seeds=1, n_batches=600)
    spec_file = _write_spec(tmp_path / "k.toml", data)
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "tpgraph", "sweep", str(spec_file), "--out", str(out), "--workers", "2", "--quiet"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
                            start_new_session=True)
    deadline = time.time() + 240
    try:
        while True:
            states = _states(out)
            done = [t for t in states.values() if t.state == TrialState.COMPLETE]
            if done and len(done) < 6:
                break
            assert proc.poll() is None, "the study ended before it could be killed"
            assert time.time() < deadline, "no trial finished in time"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the client and its LocalCluster, at once
        proc.wait()
    time.sleep(0.5)
    before = {k: (t.value, t.user_attrs["run_dirs"]) for k, t in _states(out).items() if t.state == TrialState.COMPLETE}
    stamps = {k: (Path(d[0]) / "summary.json").stat().st_mtime_ns for k, (_, d) in before.items()}
    run = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    after = _states(out)
    for k, (value, dirs) in before.items():  # finished trials kept, not run again
        assert after[k].state == TrialState.COMPLETE and after[k].value == value
        assert (Path(dirs[0]) / "summary.json").stat().st_mtime_ns == stamps[k]
    originals = [t for t in after.values() if t.user_attrs.get("retry_of") is None]
    assert len(originals) == 6
    for t in originals:
        if t.state == TrialState.FAIL:  # left running by the killed client: retried once, and the retry finished
            retries = [r for r in after.values() if r.user_attrs.get("retry_of") == t.number]
            assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
            assert retries[0].params == t.params
        else:
            assert t.state == TrialState.COMPLETE
    # the resumed session drew new parameters, not the first session's again
    assert len({tuple(sorted(t.params.items())) for t in originals}) == 6
    # and every value is what an uninterrupted serial run of the same parameters gives
    assert values_by_params(Study.open(out)) == serial_reference(data, Study.open(out), tmp_path / "reference")


def serial_reference(data: dict, study: Study, folder: Path) -> dict:
    """The values of ``study``'s complete trials' parameters, each run once more serially (enqueued)."""
    params = [dict(k[1]) for k in values_by_params(study)]
    ref_data = copy.deepcopy(data)
    ref_data["study"]["trials"] = len(params)
    ref = Study(parse_spec(ref_data), folder)
    g = ref.optuna_studies()[0]
    for p in params:
        g.study.enqueue_trial(p)
    ref.run(SerialExecutor())
    return values_by_params(ref)


def test_killed_worker_still_completes_the_study(tmp_path):
    data = tiny_spec(trials=4, seeds=1, n_batches=3000)
    study = Study(parse_spec(copy.deepcopy(data)), tmp_path / "study")
    executor = make_executor(None, workers=2)
    errors = []

    def run():
        try:
            study.run(executor)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    pids = executor.client.run(os.getpid)  # worker address -> process id
    thread = threading.Thread(target=run)
    thread.start()
    killed = None
    try:
        deadline = time.time() + 240
        while killed is None:
            # a trial that a worker is processing and that has written its first checkpoint but not finished
            for address, keys in executor.client.processing().items():
                for key in keys:
                    number = int(str(key).split("-")[2])
                    run_dir = study.folder / "trials" / "all" / f"trial-{number:04d}" / "seed-0"
                    summary = run_dir / "summary.json"
                    if ((run_dir / "checkpoint" / "checkpoint.json").exists() and summary.exists()
                            and json.loads(summary.read_text())["status"] == "running"):
                        os.kill(pids[address], signal.SIGKILL)
                        killed = number
                        break
                if killed is not None:
                    break
            assert time.time() < deadline and thread.is_alive(), "no running trial to kill"
            time.sleep(0.01)
        thread.join(timeout=300)
    finally:
        executor.close()
    assert not errors, errors
    trials = {t.number: t for t in study.optuna_studies()[0].study.get_trials(deepcopy=False)}
    assert trials[killed].state == TrialState.FAIL
    assert "error" in trials[killed].user_attrs
    retry = [t for t in trials.values() if t.user_attrs.get("retry_of") == killed]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    others = [t for n, t in trials.items() if n != killed and t.user_attrs.get("retry_of") is None]
    assert len(others) == 3 and all(t.state == TrialState.COMPLETE for t in others)
    assert all(math.isfinite(t.value) and len(t.user_attrs["seed_values"]) == 1 for t in others)
    # the retry resumed the killed run from its checkpoint and reached the uninterrupted run's value
    one = copy.deepcopy(data)
    one["study"]["trials"] = 1
    ref = Study(parse_spec(one), tmp_path / "reference")
    ref.optuna_studies()[0].study.enqueue_trial(trials[killed].params)
    ref.run(SerialExecutor())
    assert retry[0].value == ref.result().groups[0]["best_value"]


def test_pruner_stops_bad_trials(tmp_path):
    data = tiny_spec(trials=8, seeds=1, n_batches=200, pruner="median",
                     pruner_options={"n_startup_trials": 2, "n_warmup_steps": 20})
    data["space"]["optimizer.lr_f"] = {"type": "log_uniform", "low": 1e-6, "high": 1e-1}
    study = Study(parse_spec(data), tmp_path / "study")
    study.run(SerialExecutor())
    trials = study.optuna_studies()[0].study.get_trials(deepcopy=False)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert len(trials) == 8
    assert pruned, "the median pruner pruned nothing"
    for t in pruned:  # a pruned run stopped early and says so
        summary = json.loads((Path(t.user_attrs["run_dirs"][0]) / "summary.json").read_text())
        assert summary["batches_done"] < 200 and summary["reason"].startswith("pruned")


def test_cli_sweep_errors_are_one_line(tmp_path):
    data = tiny_spec()
    data["space"]["optimizer.lr_f"]["low"] = -1.0
    spec_file = _write_spec(tmp_path / "bad.toml", data)
    run = subprocess.run([sys.executable, "-m", "tpgraph", "sweep", str(spec_file), "--out", str(tmp_path / "s")],
                         env=_env(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.startswith("tpgraph: error: space.'optimizer.lr_f'")
    assert not (tmp_path / "s").exists(), "nothing may be created before the spec is valid"


def test_study_folder_is_self_contained(tmp_path):
    """A spec whose base_config is relative to the spec file: the folder holds the resolved base."""
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "base.toml").write_text("[task]\ndelay = 3\n[model]\nn_hidden = 8\n"
                                                "[protocol]\nn_batches = 30\nwarmup = 5\nval_batches = 2\n"
                                                "val_every = 10\nbatch_size = 4\n")
    (tmp_path / "specs").mkdir()
    spec_file = tmp_path / "specs" / "s.toml"
    spec_file.write_text('[study]\ntrials = 1\nsampler = "random"\npruner = "none"\nbase_config = "../cfg/base.toml"\n'
                         '[space]\n"optimizer.lr_f" = { type = "log_uniform", low = 1e-3, high = 1e-2 }\n')
    from tpgraph.studies import load_spec

    spec = load_spec(spec_file)
    assert spec.name == "s" and spec.base.task.delay == 3
    study = Study(spec, tmp_path / "out")
    study.run(SerialExecutor())
    reopened = Study.open(tmp_path / "out")  # from the folder alone, wherever the spec file went
    assert reopened.spec.base == spec.base and reopened.spec.name == "s"
    assert Study(load_spec(spec_file), tmp_path / "out").folder == study.folder  # the same spec resumes


def test_reproduce_smoke_writes_the_tables(tmp_path):
    from tpgraph.studies.reproduce import BUDGETS, CSV_COLUMNS, TABLES, reproduce

    res = reproduce("table1", tmp_path / "t1", BUDGETS["smoke"], values=(5,), scheduler="serial", say=lambda s: None)
    rows = res["rows"]
    assert [(r["T"], r["method"]) for r in rows] == [(5, "tp"), (5, "bptt")]
    for r in rows:
        assert r["seeds"] == BUDGETS["smoke"].final_seeds
        assert (r["paper_loss"], r["paper_accuracy"]) == TABLES["table1"].paper[5][r["method"]]
        assert r["baseline_loss"] == pytest.approx(10 * math.log(8) / 25)
        assert 0 <= r["best_val_accuracy"] <= 100 and r["best_val_loss"] <= r["final_val_loss"] + 1e-12
    # the searched values of the final runs are the search's best, and BPTT was not searched over TP-only keys
    assert "method.alpha" in rows[0]["params"] and "method.alpha" not in rows[1]["params"]
    final = Study.open(tmp_path / "t1" / "final")
    for g in final.optuna_studies():
        (t,) = g.study.get_trials(deepcopy=False)
        search_best = [r for r in rows if r["method"] == g.values["method.name"]][0]["params"]
        assert t.params == search_best and t.user_attrs["seeds"] == [1001, 1002]
    lines = (tmp_path / "t1" / "table1.csv").read_text().splitlines()
    assert lines[0].split(",") == list(CSV_COLUMNS) and len(lines) == 3
    md = (tmp_path / "t1" / "table1.md").read_text()
    assert "Budget 'smoke'" in md and "| 5 | tp |" in md
    assert res["files"]["loss"].exists() and res["files"]["spectral"].exists()


@pytest.mark.parametrize("name, cls", [("median", "MedianPruner"), ("successive_halving", "SuccessiveHalvingPruner"),
                                       ("hyperband", "HyperbandPruner"), ("none", "NopPruner")])
def test_pruners_by_name_with_batch_defaults(name, cls):
    from tpgraph.studies.spec import make_pruner

    spec = parse_spec(tiny_spec(seeds=2, n_batches=500, pruner=name))
    args = spec.pruner_args()
    assert args[2] == 2 * 501 and args[3] == 100  # two seeds' curves; a fifth of one run before pruning
    pruner = make_pruner(*args)
    assert type(pruner).__name__ == cls
    if name == "median":
        assert pruner._n_warmup_steps == 100
    if name == "hyperband":
        assert pruner._min_resource == 100 and pruner._max_resource == 1002
    # the user's options win over the defaults
    if name == "median":
        assert make_pruner("median", {"n_warmup_steps": 7}, 10, 100)._n_warmup_steps == 7


def test_reproduce_ranges_can_be_replaced():
    from tpgraph.studies.reproduce import SEARCH_SPACE, search_space

    space = search_space({"optimizer.lr_y": (1e-3, 0.5)})
    assert (space["optimizer.lr_y"]["low"], space["optimizer.lr_y"]["high"]) == (1e-3, 0.5)
    assert space["optimizer.lr_f"] == SEARCH_SPACE["optimizer.lr_f"]
    assert SEARCH_SPACE["optimizer.lr_y"]["low"] == 1e-4  # the default is not changed
    with pytest.raises(ConfigError, match="model.n_hidden"):
        search_space({"model.n_hidden": (8, 16)})


def test_a_study_too_large_for_the_memory_limit_is_refused_before_any_trial(tmp_path):
    from tpgraph.errors import MemoryLimitError

    data = tiny_spec()
    data["groups"] = {"task.delay": [2, 3]}
    data["base"]["protocol"]["memory_limit"] = "20MB"
    data["space"]["model.n_hidden"] = {"type": "int", "low": 8, "high": 1024}
    with pytest.raises(MemoryLimitError, match=r"group \{'task.delay': 2\}.*would allocate"):
        parse_spec(data)
    data["space"]["model.n_hidden"]["high"] = 16
    assert parse_spec(data).trials == 2  # the small study fits


@pytest.mark.parametrize("path", sorted((REPO / "examples" / "studies").glob("*.toml")), ids=lambda p: p.name)
def test_example_specs_are_valid(path):
    from tpgraph.studies import load_spec

    spec = load_spec(path)
    assert spec.trials >= 1 and spec.group_values()
