"""Tests of the tpgraph command through its real entry point (``python -m tpgraph`` in a subprocess)."""

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tpgraph.cli import format_comparison, format_summary, main

TINY = ["--delay", "2", "--hidden", "12", "--val-batches", "3", "--set", "protocol.warmup=20"]


def tpgraph(*args, cwd=None, timeout=120):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "tpgraph", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def test_train_through_the_entry_point(tmp_path):
    r = tpgraph("train", *TINY, "--batches", "60", "--val-every", "20", "--runs-dir", tmp_path, "--name", "run",
                "--no-plots")
    assert r.returncode == 0, r.stderr
    root = tmp_path / "run"
    for line in ("best validation:", "final validation:", "memoryless baseline: 0.9452", "ms per batch",
                 f"run folder:         {root}"):
        assert line in r.stdout, (line, r.stdout)
    assert "Traceback" not in r.stderr
    with open(root / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(row["batch"]) for row in rows] == [0, 20, 40, 60]
    with np.load(root / "weights.npz", allow_pickle=False) as z:
        assert {"W_xh", "W_h", "b_h", "W_hy", "b_y", "V_h", "c_h"} == set(z.files)
    summary = json.loads((root / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["batches_done"] == 60
    # not a terminal: one progress line per validation point on stderr
    assert sum("val" in line for line in r.stderr.splitlines()) == 4
    quiet = tpgraph("train", *TINY, "--batches", "30", "--runs-dir", tmp_path, "--quiet", "--no-plots")
    assert quiet.returncode == 0 and quiet.stderr == ""


@pytest.mark.parametrize("args, words", [
    (["train", "--set", "protocol.batchsize=3"], ["protocol.batchsize", "protocol.batch_size"]),
    (["train", "--set", "optimizer.lr_f=-1"], ["optimizer.lr_f", "> 0"]),
    (["train", "--batches", "zero"], ["--batches", "integer"]),
    (["train", "--method", "sgd"], ["method.name", "'tp'", "'bptt'"]),
    (["train", "no/such/config.toml"], ["not found"]),
    (["train", "--frobnicate"], ["unrecognized arguments: --frobnicate"]),
    (["train", "--resume", "no/such/run"], ["not found"]),
    (["plot", "no/such/run"], ["not found"]),
    (["bogus"], ["invalid choice"]),
])
def test_user_errors_are_one_line_and_exit_2(args, words, capsys):
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tpgraph: error: "), lines
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.mark.parametrize("args", [["train", "--set", "protocol.batchsize=3"], ["train", "--frobnicate"]])
def test_user_errors_through_the_entry_point(args):
    r = tpgraph(*args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tpgraph: error: "), r.stderr
    assert r.stdout == ""


def test_debug_shows_the_traceback():
    r = tpgraph("train", "--set", "protocol.batchsize=3", "--debug")
    assert r.returncode != 0 and "Traceback" in r.stderr and "ConfigError" in r.stderr


@pytest.mark.parametrize("command", ["train", "compare", "plot", "config", "research"])
def test_help_explains_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: tpgraph " + command in out and "examples:" in out and "tpgraph " + command in out


def test_config_command_prints_resolved_toml(tmp_path, capsys):
    assert main(["config", "--set", "task.delay=9", "--method", "bptt"]) == 0
    out = capsys.readouterr().out
    import tomllib

    data = tomllib.loads(out)
    assert data["task"]["delay"] == 9 and data["method"]["name"] == "bptt"
    assert main(["config", "--keys"]) == 0
    assert "max_spectral_radius" in capsys.readouterr().out


def test_compare_and_plot(tmp_path, capsys):
    code = main(["compare", *TINY, "--batches", "40", "--val-every", "20", "--runs-dir", str(tmp_path),
                 "--name", "cmp", "--quiet", "--bptt-set", "optimizer.lr_f=1e-3"])
    assert code == 0
    out = capsys.readouterr().out
    assert "TP" in out and "BPTT" in out and "best validation loss" in out and "memoryless baseline" in out
    root = tmp_path / "cmp"
    for name in ("tp/metrics.csv", "bptt/metrics.csv", "comparison.json", "overview.png", "loss.png",
                 "spectral_radius.png"):
        assert (root / name).is_file(), name
    tp = json.loads((root / "tp" / "summary.json").read_text())
    bptt = json.loads((root / "bptt" / "summary.json").read_text())
    assert tp["method"] == "tp" and bptt["method"] == "bptt"
    # same initialisation: identical validation loss before training
    with open(root / "tp" / "metrics.csv") as a, open(root / "bptt" / "metrics.csv") as b:
        assert next(csv.DictReader(a))["val_loss"] == next(csv.DictReader(b))["val_loss"]
    out_png = tmp_path / "both.png"
    assert main(["plot", str(root / "tp"), str(root / "bptt"), "-o", str(out_png)]) == 0
    assert out_png.read_bytes()[:4] == b"\x89PNG"
    assert main(["plot", str(root / "tp"), "-o", str(tmp_path / "x.jpg")]) == 2


def test_summary_formatting_handles_missing_values():
    summary = {"status": "diverged", "reason": "diverged at batch 3: the loss is not finite",
               "best": {"val_loss": None, "val_loss_batch": None, "seq_acc": None, "seq_acc_batch": None},
               "final": {}, "baseline_loss": 0.8318, "ms_per_batch": None, "elapsed_s": 0.5}
    text = format_summary(summary)
    assert "diverged at batch 3" in text and "0.8318" in text
    assert "TP" in format_comparison({"tp": summary, "bptt": summary})


def test_diverging_run_exits_1_with_the_reason(tmp_path):
    r = tpgraph("train", *TINY, "--batches", "60", "--lr-f", "1e37", "--lr-y", "1e37", "--runs-dir", tmp_path,
                "--name", "boom", "--quiet", "--no-plots")
    assert r.returncode == 1, r.stderr
    assert "status:             diverged -- diverged at batch" in r.stdout
    assert "RuntimeWarning" not in r.stderr and "Traceback" not in r.stderr
    summary = json.loads((tmp_path / "boom" / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["divergence"]["batch"] >= 21


RESUME_ARGS = [*TINY, "--batches", "700", "--val-every", "50", "--checkpoint-every", "40", "--no-plots", "--quiet",
               "--set", "method.noise_sigma=0.2"]


def _wait_for(path: Path, proc, timeout=60.0):
    end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


def test_sigkill_at_a_random_batch_then_resume_is_bit_for_bit(tmp_path):
    """A real training process killed with SIGKILL, resumed, equals one never interrupted."""
    ref = tpgraph("train", *RESUME_ARGS, "--runs-dir", tmp_path, "--name", "ref")
    assert ref.returncode == 0, ref.stderr
    rng = random.Random()
    killed_at = None
    for attempt in range(5):  # a kill must land before the run ends; retry if it did not
        name = f"killed{attempt}"
        proc = subprocess.Popen([sys.executable, "-m", "tpgraph", "train", *RESUME_ARGS, "--runs-dir",
                                 str(tmp_path), "--name", name], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        index = tmp_path / name / "checkpoint" / "checkpoint.json"
        if _wait_for(index, proc):
            time.sleep(rng.uniform(0.0, 0.4))
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        status = json.loads((tmp_path / name / "summary.json").read_text())["status"]
        if proc.returncode == -signal.SIGKILL and status == "running":
            killed_at = json.loads(index.read_text())["batch"]
            break
    assert killed_at is not None, "the run always finished before the kill"
    assert json.loads((tmp_path / name / "summary.json").read_text())["status"] == "running"
    r = tpgraph("train", "--resume", tmp_path / name, "--quiet")
    assert r.returncode == 0, r.stderr
    a, b = tmp_path / "ref", tmp_path / name
    with np.load(a / "weights.npz", allow_pickle=False) as wa, np.load(b / "weights.npz", allow_pickle=False) as wb:
        assert set(wa.files) == set(wb.files)
        for k in wa.files:
            assert wa[k].tobytes() == wb[k].tobytes(), k
    with open(a / "metrics.csv") as fa, open(b / "metrics.csv") as fb:
        rows_a, rows_b = list(csv.DictReader(fa)), list(csv.DictReader(fb))
    for ra, rb in zip(rows_a, rows_b, strict=True):
        ra.pop("elapsed_s"), rb.pop("elapsed_s")
        assert ra == rb
    sa = json.loads((a / "summary.json").read_text())
    sb = json.loads((b / "summary.json").read_text())
    assert sb["sessions"] == 2 and sa["best"] == sb["best"] and sb["status"] == "completed"


def test_sigint_saves_a_checkpoint_and_the_run_resumes(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "tpgraph", "train", *RESUME_ARGS, "--batches", "3000",
                             "--runs-dir", str(tmp_path), "--name", "int"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert _wait_for(tmp_path / "int" / "metrics.csv", proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted (Ctrl-C)" in out and "tpgraph train --resume" in out and "Traceback" not in err
    summary = json.loads((tmp_path / "int" / "summary.json").read_text())
    assert summary["status"] == "aborted" and summary["checkpoint_batch"] == summary["batches_done"]
    r = tpgraph("train", "--resume", tmp_path / "int", "--quiet", "--set", "protocol.n_batches=5")
    assert r.returncode == 2 and "--resume" in r.stderr


def test_a_run_too_large_is_refused_at_once_and_leaves_no_folder(tmp_path, capsys):
    code = main(["train", *TINY, "--delay", "10000000", "--runs-dir", str(tmp_path), "--name", "huge", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("tpgraph: error: the run (copy_memory, tp) at length 10000020") \
        and "batch size 20" in err and "limit of" in err and err.count("\n") == 1, err
    assert not (tmp_path / "huge").exists()
    code = main(["train", *TINY, "--memory-limit", "1M", "--runs-dir", str(tmp_path), "--quiet"])
    assert code == 2 and "limit of 1.0 MiB (the memory_limit given)" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def _interrupted_run(tmp_path, name="paused", plots=True):
    """A run stopped (as by Ctrl-C) at batch 20 of 60, with a checkpoint to resume from."""
    from tpgraph.train import Callback, Trainer
    from tpgraph.train.config import load_config

    class StopAt(Callback):
        def on_batch(self, trainer, batch, loss):
            if batch == 20:
                trainer.request_stop("interrupted (test)")

    sets = ["task.delay=2", "model.n_hidden=12", "protocol.val_batches=3", "protocol.warmup=5",
            "protocol.n_batches=60", "protocol.val_every=20", f"output.plots={'true' if plots else 'false'}",
            f"output.runs_dir={json.dumps(str(tmp_path))}", f"output.name={json.dumps(name)}"]
    cfg = load_config(None, sets)
    from tpgraph.train.trainer import new_run_dir

    summary = Trainer(cfg, new_run_dir(cfg), callbacks=[StopAt()]).run()
    assert summary["status"] == "aborted" and summary["batches_done"] == 20
    return tmp_path / name


def test_resume_takes_display_options(tmp_path, capsys):
    root = _interrupted_run(tmp_path)
    for png in root.glob("*.png"):
        png.unlink()
    code = main(["train", "--resume", str(root), "--no-plots", "--progress", "lines", "--threads", "1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads((root / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["batches_done"] == 60 and summary["sessions"] == 2
    assert summary["plots"] == [] and not list(root.glob("*.png"))
    assert "output.plots" not in err and "batch 60/60" in err  # the progress lines of --progress lines
    assert "plots = true" in (root / "config.toml").read_text()  # the recorded configuration is unchanged
    # --quiet with --resume; configuration changes are still refused
    root = _interrupted_run(tmp_path, "paused2")
    assert main(["train", "--resume", str(root), "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["train", "--resume", str(root), "--batches", "80"]) == 2
    assert "--resume" in capsys.readouterr().err


@pytest.mark.parametrize("task, words", [
    (["--set", "task.name=adding", "--set", "task.length=12"], ["memoryless baseline: 0.0417"]),
    (["--set", "task.name=temporal_order", "--set", "task.length=12", "--set", "task.bits=3"],
     ["memoryless baseline: 2.0794"]),
])
def test_the_long_range_tasks_train_from_the_command_line(task, words, tmp_path):
    r = tpgraph("train", *task, "--hidden", "12", "--val-batches", "3", "--set", "protocol.warmup=20",
                "--batches", "60", "--val-every", "30", "--runs-dir", tmp_path, "--name", "run", "--no-plots")
    assert r.returncode == 0, r.stderr
    for w in words:
        assert w in r.stdout, (w, r.stdout)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["task"]["name"] == task[1].split("=")[1]
    assert summary["solved"] in (True, False) and summary["success_acc"] == 0.99
    config = (tmp_path / "run" / "config.toml").read_text()
    assert "length = 12" in config and "delay" not in config


def test_research_refuses_unknown_variants_and_lists_them(capsys):
    assert main(["research", "list"]) == 0
    out = capsys.readouterr().out
    assert "baseline" in out and "method.truncate=10" in out
    assert main(["research", "run", "nope"]) == 2
    assert "unknown variant" in capsys.readouterr().err
    assert main(["research", "run"]) == 2


def test_research_accepts_every_research_budget_and_no_other():
    from tpgraph.cli import _UsageError, build_parser
    from tpgraph.studies.research import RESEARCH_BUDGETS

    parser = build_parser()
    for name in RESEARCH_BUDGETS:
        assert parser.parse_args(["research", "table", "--budget", name]).budget == name
    with pytest.raises(_UsageError, match="invalid choice: 'full'"):
        parser.parse_args(["research", "table", "--budget", "full"])
