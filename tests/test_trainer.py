"""Tests of tpgraph.train.trainer (in process) and tpgraph.progress: the protocol, stop rules, records."""

import io
import json
import math

import numpy as np
import pytest

from tpgraph.errors import ConfigError
from tpgraph.progress import Progress, format_duration
from tpgraph.train import METRIC_COLUMNS, Callback, Config, Trainer, apply_overrides, new_run_dir, read_metrics_csv


def _config(*extra, runs_dir=None):
    sets = ["task.delay=2", "model.n_hidden=12", "protocol.n_batches=100", "protocol.warmup=20",
            "protocol.val_batches=3", "protocol.val_every=25", "output.checkpoint_every=50", "output.plots=false"]
    if runs_dir is not None:
        sets.append(f"output.runs_dir={runs_dir}")
    return apply_overrides(Config(), [*sets, *extra])


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_start(self, trainer):
        self.events.append("start")

    def on_batch(self, trainer, batch, loss):
        self.events.append(("batch", batch, loss))

    def on_validation(self, trainer, row):
        self.events.append(("val", row["batch"]))

    def on_checkpoint(self, trainer, path):
        self.events.append(("ckpt", trainer.state.batch))

    def on_end(self, trainer, summary):
        self.events.append(("end", summary["status"]))


def test_tp_and_bptt_start_from_the_same_initialisation_and_batches():
    tp = Trainer(_config())
    bptt = Trainer(_config().with_method("bptt"))
    assert tp.model.method == "tp" and bptt.model.method == "bptt"
    for k, v in tp.model.params.items():
        np.testing.assert_array_equal(v, bptt.model.params[k])
    np.testing.assert_array_equal(tp.val_inputs, bptt.val_inputs)
    for _ in range(3):
        a, b = tp.task.batch(tp.data_rng, 20), bptt.task.batch(bptt.data_rng, 20)
        np.testing.assert_array_equal(a[0], b[0])


def test_protocol_rows_bests_and_callbacks():
    rec = Recorder()
    t = Trainer(_config("protocol.n_batches=110"), callbacks=[rec])
    s = t.run()
    assert s["status"] == "completed" and s["batches_done"] == 110
    batches = [r["batch"] for r in t.state.rows]
    assert batches == [0, 25, 50, 75, 100, 110]  # batch 0, every val_every, and the end
    assert math.isnan(t.state.rows[0]["train_loss"]) and all(math.isfinite(r["train_loss"]) for r in t.state.rows[1:])
    assert set(t.state.rows[0]) == set(METRIC_COLUMNS)
    assert s["best"]["val_loss"] == min(r["val_loss"] for r in t.state.rows)
    assert s["best"]["seq_acc"] == max(r["seq_acc"] for r in t.state.rows)
    assert s["final"]["batch"] == 110 and s["baseline_loss"] == pytest.approx(10 * math.log(8) / 22)
    assert rec.events[0] == "start" and rec.events[-1] == ("end", "completed")
    assert sum(1 for e in rec.events if e[0] == "batch") == 110
    assert [e[1] for e in rec.events if e[0] == "val"] == batches
    assert not any(e[0] == "ckpt" for e in rec.events)  # no run folder: nothing written
    # the training loss of a point is the mean of the batches since the previous point
    losses = [e[2] for e in rec.events if e[0] == "batch"]
    assert t.state.rows[1]["train_loss"] == pytest.approx(np.mean(losses[:25]), rel=1e-12)


def test_tp_warmup_trains_only_the_inverse():
    t = Trainer(_config("protocol.val_every=20"))
    before = t.model.params.to_dict()

    class StopAtWarmup(Callback):
        def on_batch(self, trainer, batch, loss):
            if batch == 20:
                trainer.request_stop("end of warm-up")

    t.callbacks.append(StopAtWarmup())
    t.run()
    for g in ("W_xh", "W_h", "b_h", "W_hy", "b_y"):
        np.testing.assert_array_equal(t.model.params[g], before[g])
    assert not np.array_equal(t.model.params["V_h"], before["V_h"])
    assert math.isnan(t.state.rows[-1]["local_loss"])  # no target pass during the warm-up
    assert math.isfinite(t.state.rows[-1]["reconstruction_loss"])


def test_bptt_has_no_warmup_and_no_inverse_metrics():
    t = Trainer(_config("method.name=bptt"))
    before = t.model.params.to_dict()
    t.run()
    assert not np.array_equal(t.model.params["W_h"], before["W_h"])
    np.testing.assert_array_equal(t.model.params["V_h"], before["V_h"])
    assert all(math.isnan(r["reconstruction_loss"]) for r in t.state.rows)


def test_divergence_stops_the_run_and_records_the_reason(tmp_path):
    cfg = _config("optimizer.lr_f=1e37", "optimizer.lr_y=1e37", "output.checkpoint_every=10", runs_dir=tmp_path)
    t = Trainer(cfg, new_run_dir(cfg))
    s = t.run()
    assert s["status"] == "diverged"
    assert "batch" in s["reason"] and s["divergence"]["batch"] > 20  # after the warm-up
    assert s["divergence"]["quantity"]
    assert str(s["divergence"]["batch"]) in s["reason"]
    on_disk = json.loads((t.files.summary).read_text())
    assert on_disk["status"] == "diverged" and on_disk["reason"] == s["reason"]
    assert not t.files.weights.exists() and "not finite" in on_disk["note"]
    # the last good checkpoint is kept: it loads and is finite
    from tpgraph.train.checkpoint import load_checkpoint

    doc, arrays = load_checkpoint(t.files.checkpoint_dir)
    assert doc["batch"] < s["divergence"]["batch"]
    assert all(np.isfinite(v).all() for k, v in arrays.items() if k.startswith("param/"))
    from tpgraph.errors import CheckpointError

    with pytest.raises(CheckpointError, match="diverged"):
        Trainer.resume(t.files.root)


def test_spectral_radius_bound_aborts_with_the_reason():
    s = Trainer(_config("protocol.max_spectral_radius=0.5")).run()
    assert s["status"] == "aborted"
    assert "spectral radius of W_h" in s["reason"] and "0.5" in s["reason"]
    assert s["batches_done"] == 0


def test_early_stopping(monkeypatch):
    t = Trainer(_config("protocol.early_stop_patience=2"))
    losses = iter([1.0, 0.9, 0.95, 0.93, 0.5])
    monkeypatch.setattr(t.model, "evaluate", lambda x, y: {"loss": next(losses), "step_acc": 0.5, "seq_acc": 0.0})
    s = t.run()
    assert s["status"] == "completed" and "early stop" in s["reason"]
    assert s["batches_done"] == 75 and s["best"]["val_loss"] == 0.9


def test_non_finite_validation_loss_is_divergence(monkeypatch):
    t = Trainer(_config())
    monkeypatch.setattr(t.model, "evaluate", lambda x, y: {"loss": math.nan, "step_acc": 0.0, "seq_acc": 0.0})
    s = t.run()
    assert s["status"] == "diverged" and s["divergence"]["quantity"] == "validation loss"


def test_reduction_sum_records_per_sample_losses():
    mean = Trainer(_config("protocol.n_batches=30", "protocol.val_every=30"))
    total = Trainer(_config("protocol.n_batches=30", "protocol.val_every=30", "method.reduction=sum"))
    mean.run(), total.run()
    # batch 0 is the same model in both runs: the recorded (per-sample) validation losses agree
    assert total.state.rows[0]["val_loss"] == pytest.approx(mean.state.rows[0]["val_loss"], rel=1e-6)
    assert total.state.rows[1]["train_loss"] < 3


def test_run_folder_contents(tmp_path):
    cfg = _config("output.plots=true", runs_dir=tmp_path)
    t = Trainer(cfg, new_run_dir(cfg))
    s = t.run()
    root = t.files.root
    names = {p.name for p in root.iterdir()}
    assert {"config.toml", "metrics.csv", "summary.json", "weights.npz", "weights_best.npz", "checkpoint",
            "loss.png", "spectral_radius.png"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    m = read_metrics_csv(root / "metrics.csv")
    assert list(m) == list(METRIC_COLUMNS) and len(m["batch"]) == 5
    with np.load(root / "weights.npz", allow_pickle=False) as z:
        assert sorted(z.files) == sorted(t.model.params)
        np.testing.assert_array_equal(z["W_h"], t.model.params["W_h"])
    summary = json.loads((root / "summary.json").read_text())
    for key in ("status", "reason", "best", "final", "baseline_loss", "ms_per_batch", "batches_done",
                "beats_baseline", "task", "method", "elapsed_s", "weights", "plots", "run_dir"):
        assert key in summary, key
    assert summary["status"] == "completed" and summary["ms_per_batch"] > 0
    from tpgraph.train.config import load_config

    assert load_config(root / "config.toml") == cfg
    assert (root / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert s["plots"] == ["loss.png", "spectral_radius.png"]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_run_folder_files_follow_the_umask(tmp_path, umask):
    import os

    old = os.umask(umask)
    try:
        cfg = _config("output.plots=true", "protocol.n_batches=50", runs_dir=tmp_path)
        t = Trainer(cfg, new_run_dir(cfg))
        t.run()
        files = [p for p in t.files.root.rglob("*") if p.is_file()]
    finally:
        os.umask(old)
    assert {"config.toml", "metrics.csv", "summary.json", "weights.npz", "loss.png", "checkpoint.json"} \
        <= {p.name for p in files}
    modes = {p.relative_to(t.files.root).as_posix(): oct(p.stat().st_mode & 0o777) for p in files}
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes


def test_named_run_folder_is_not_overwritten(tmp_path):
    cfg = _config("output.name=mine", runs_dir=tmp_path)
    Trainer(cfg, new_run_dir(cfg)).run()
    with pytest.raises(ConfigError, match="already exists"):
        new_run_dir(cfg)
    unnamed = _config(runs_dir=tmp_path)
    assert new_run_dir(unnamed) != new_run_dir(unnamed)


def test_sequence_expansion_trains():
    s = Trainer(_config("task.name=sequence_expansion", "task.length=8")).run()
    assert s["status"] == "completed" and s["baseline_loss"] is None and s["beats_baseline"] is None


def test_same_config_same_result():
    a, b = Trainer(_config()), Trainer(_config())
    a.run(), b.run()
    for k, v in a.model.params.items():
        np.testing.assert_array_equal(v, b.model.params[k])
    assert [r["val_loss"] for r in a.state.rows] == [r["val_loss"] for r in b.state.rows]


# ---------------------------------------------------------------------- memory
def test_a_run_too_large_for_the_memory_is_refused_before_it_is_built(monkeypatch):
    import tpgraph.models.srn as srn_module
    from tpgraph.errors import MemoryLimitError

    declared = []
    declare = srn_module.build_srn
    monkeypatch.setattr(srn_module, "build_srn", lambda L, *a, **k: declared.append(L) or declare(L, *a, **k))
    with pytest.raises(MemoryLimitError) as exc:
        Trainer(_config("task.delay=10000000", "protocol.batch_size=20"))
    msg = str(exc.value)
    for part in ("the run (copy_memory, tp) at length 10000020", "batch size 20", "3 validation batches",
                 "GiB", "limit of", "nothing was allocated", "protocol.memory_limit"):
        assert part in msg, (part, msg)
    assert max(declared) <= 3  # nothing of length 10^7 was declared, let alone compiled
    with pytest.raises(MemoryLimitError, match="the memory_limit given"):
        Trainer(_config("protocol.memory_limit='1M'", "task.delay=200"))


def test_the_run_estimate_covers_what_the_run_allocates():
    t = Trainer(_config("protocol.n_batches=30", "protocol.warmup=5", "protocol.val_every=30"))
    est = t.estimate_memory()
    t.run()
    buffers = sum(sum(b.nbytes.values()) for b in t.engine._buffers.values())
    assert set(t.engine._buffers) == {t.config.protocol.batch_size, 3 * t.config.protocol.batch_size}
    data = sum(a.nbytes for a in (t.val_inputs, t.val_labels, t._val_x, t._val_y))
    assert buffers + data <= est.total - est.structure <= 1.1 * (buffers + data) + 2**16


def test_compile_progress_on_a_terminal_and_as_lines(monkeypatch):
    import time as time_module

    bar, lines = _Tty(), io.StringIO()
    callbacks = [Progress("bar", "tp", stream=bar, min_interval=0.0), Progress("lines", "tp", stream=lines)]
    Trainer(_config("task.delay=300"), callbacks=callbacks)
    assert "declaring the graph of length 320" in bar.getvalue() and "compiling" in bar.getvalue()
    assert bar.getvalue().endswith("\r")  # the bar's line is cleared for what follows
    assert lines.getvalue() == ""  # quick: nothing off a terminal
    clock = iter(range(0, 10**6, 5))  # a slow compile: 5 s between the calls
    monkeypatch.setattr(time_module, "monotonic", lambda: float(next(clock)))
    lines = io.StringIO()
    Trainer(_config("task.delay=30"), callbacks=[Progress("lines", "tp", stream=lines)])
    assert lines.getvalue().startswith("[tp] built the graph of length 50 in ") and lines.getvalue().count("\n") == 1


# ---------------------------------------------------------------------- progress
class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_modes():
    bar, lines, off = _Tty(), io.StringIO(), io.StringIO()
    callbacks = [Progress("auto", "tp", stream=bar, min_interval=0.0), Progress("auto", "tp", stream=lines),
                 Progress("off", stream=off)]
    assert [c.mode for c in callbacks] == ["bar", "lines", "off"]
    Trainer(_config(), callbacks=callbacks).run()
    text = bar.getvalue()
    assert "\r" in text and "100/100" in text and "loss" in text and "b/s" in text and text.endswith("\n")
    out = lines.getvalue().splitlines()
    assert out[0].startswith("[tp] training copy_memory")
    assert len(out) == 1 + 5 and "val" in out[-1] and "seq_acc" in out[-1]
    assert off.getvalue() == ""


def test_format_duration():
    assert format_duration(75) == "1:15" and format_duration(3725) == "1:02:05" and format_duration(math.nan) == "?"


def test_grouped_validation_gives_the_metrics_of_per_batch_validation():
    from tpgraph.train.trainer import _group_batches

    t = Trainer(_config("protocol.val_batches=6"))
    assert t._val_x.shape == (1, t.task.length, 6 * 20)
    a = t.model.evaluate(t.val_inputs, t.val_labels)
    b = t.model.evaluate(t._val_x, t._val_y)
    assert a["step_acc"] == b["step_acc"] and a["seq_acc"] == b["seq_acc"]
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    x = np.arange(7 * 2 * 3).reshape(7, 2, 3)
    assert _group_batches(x).shape == (1, 2, 21)
    np.testing.assert_array_equal(_group_batches(x)[0][:, 3:6], x[1])
    assert _group_batches(np.zeros((11, 2, 3))).shape == (11, 2, 3)


# ---------------------------------------------------------------------- the long-range tasks
@pytest.mark.parametrize("method", ["tp", "bptt"])
def test_adding_trains_many_to_one_with_a_linear_output(method, tmp_path):
    cfg = _config("task.name=adding", "task.length=12", f"method.name={method}", "protocol.n_batches=150",
                  "optimizer.lr_f=3e-3", "optimizer.lr_y=3e-3", runs_dir=tmp_path)
    t = Trainer(cfg, tmp_path / "run")
    assert not t.model.many_to_many and t.model.output == "linear" and t.model.inputs == "real"
    assert t.val_inputs.shape == (3, 12, 20, 2) and t.val_labels.shape == (3, 1, 20, 1)
    s = t.run()
    assert s["status"] == "completed" and s["baseline_loss"] == pytest.approx(1 / 24)
    assert s["success_acc"] == 0.99 and s["solved"] is False
    # the validation loss is the mean squared error of the predictions at the last step
    pred = np.concatenate([t.model.predict(x) for x in t.val_inputs], axis=1)
    target = np.concatenate(list(t.val_labels), axis=1)
    assert s["final"]["val_loss"] == pytest.approx(float(np.mean((pred - target) ** 2)), rel=1e-4)
    assert s["final"]["seq_acc"] == pytest.approx(float(np.mean(np.abs(pred - target) < 0.04)))
    first = t.state.rows[0]["val_loss"]
    assert s["final"]["val_loss"] < first  # it learns something in 150 batches
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["task"]["name"] == "adding"


def test_temporal_order_trains_and_resumes_bit_for_bit(tmp_path):
    sets = ["task.name=temporal_order", "task.length=20", "task.bits=3", "protocol.n_batches=100"]
    full = Trainer(_config(*sets))
    s = full.run()
    assert s["baseline_loss"] == pytest.approx(math.log(8)) and s["solved"] in (True, False)
    assert full.model.n_out == 8 and full.val_labels.shape == (3, 1, 20)
    # stop after the first checkpoint (batch 50) and resume from the run folder
    part = Trainer(_config(*sets, runs_dir=tmp_path), tmp_path / "run")

    class StopAt50(Callback):
        def on_checkpoint(self, trainer, path):
            trainer.request_stop("test")

    part.callbacks.append(StopAt50())
    assert part.run()["status"] == "aborted"
    resumed = Trainer.resume(tmp_path / "run")
    assert resumed.task.positions == ((0.1, 0.2), (0.3, 0.4), (0.6, 0.7)) and resumed.task.bits == 3
    resumed.run()
    for k, v in full.model.params.items():
        np.testing.assert_array_equal(v, resumed.model.params[k])


def test_grouped_validation_keeps_trailing_axes():
    from tpgraph.train.trainer import _group_batches

    x = np.arange(4 * 3 * 5 * 2).reshape(4, 3, 5, 2)
    g = _group_batches(x)
    assert g.shape == (1, 3, 20, 2)
    np.testing.assert_array_equal(g[0][:, 5:10], x[1])


def test_solved_compares_the_best_accuracy_with_the_tasks_threshold():
    sets = ["task.name=temporal_order", "task.length=10", "protocol.n_batches=30", "protocol.warmup=10"]
    easy = Trainer(_config(*sets, "task.success_acc=0.05")).run()   # chance (25%) is enough
    hard = Trainer(_config(*sets, "task.success_acc=1.0")).run()
    assert easy["success_acc"] == 0.05 and easy["solved"] is True
    assert hard["solved"] is (hard["best"]["seq_acc"] >= 1.0)
    plain = Trainer(_config("protocol.n_batches=30", "protocol.warmup=10")).run()
    assert plain["success_acc"] is None and plain["solved"] is None   # copy memory has no threshold
