"""Tests of tpgraph.train.stability: rollback, spectral-radius control, lr warm-up, method.clip, diagnose."""

import json
import math

import numpy as np
import pytest

from tpgraph.errors import ConfigError
from tpgraph.merges import clipped_merge, get_merge
from tpgraph.train import METRIC_COLUMNS, Callback, Config, Trainer, apply_overrides, read_metrics_csv
from tpgraph.train.diagnose import diagnose
from tpgraph.train.records import atomic_write_json, write_metrics_csv
from tpgraph.train.stability import ROW_COLUMNS, radius_bound, spectral_radius


def _config(*extra, runs_dir=None):
    sets = ["task.delay=2", "model.n_hidden=8", "protocol.n_batches=60", "protocol.warmup=10",
            "protocol.val_batches=2", "protocol.val_every=10", "output.checkpoint_every=0", "output.plots=false",
            "optimizer.lr_f=0.003", "optimizer.lr_y=0.01"]
    if runs_dir is not None:
        sets.append(f"output.runs_dir={runs_dir}")
    return apply_overrides(Config(), [*sets, *extra])


def _params(trainer):
    return {k: v.copy() for k, v in trainer.model.params.items()}


def _assert_same_params(a, b):
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


class Corrupt(Callback):
    """After the given batches, scale the output weights up (a collapse) or put a NaN in W_h (a divergence)."""

    def __init__(self, batches, how="scale"):
        self.batches, self.how = set(batches), how

    def on_batch(self, trainer, batch, loss):
        if batch in self.batches:
            w = trainer.model.params["W_hy" if self.how == "scale" else "W_h"]
            if self.how == "scale":
                w *= 200.0
            else:
                w[0, 0] = np.nan


class Snapshots(Callback):
    """The parameters and optimiser states at every validation point, as the point left them."""

    def __init__(self):
        self.points = []

    def on_validation(self, trainer, row):
        opts = {g: opt.state_dict() for g, opt in trainer.engine.optimizers.items()}
        lrs = {g: opt.lr for g, opt in trainer.engine.optimizers.items()}
        self.points.append((row["batch"], row["rollbacks"], _params(trainer), opts, lrs))


class StopAtCheckpoint(Callback):
    def __init__(self, batch):
        self.batch = batch

    def on_checkpoint(self, trainer, path):
        if trainer.state.batch == self.batch:
            trainer.request_stop("test")


# ---------------------------------------------------------------------- off by default
def test_options_off_by_default_and_inert_settings_change_nothing():
    cfg = _config()
    p = cfg.protocol
    assert (p.rollback, p.spectral_limit, p.lr_warmup, cfg.method.clip) == (None, None, 0, None)
    plain = Trainer(cfg)
    assert plain.stability is None and plain.metric_columns == METRIC_COLUMNS
    s = plain.run()
    assert "rollbacks" not in s and "stability" not in s and "rollbacks" not in plain.state.rows[-1]
    # a rollback that never fires and a limit never reached train the same weights, bit for bit
    inert = Trainer(_config("protocol.rollback=1e9", "protocol.spectral_limit=100"))
    s2 = inert.run()
    assert s2["rollbacks"] == 0 and s2["stability"]["spectral"]["rescales"] == 0
    assert s2["stability"]["spectral"]["checks"] == 6
    _assert_same_params(_params(plain), _params(inert))
    assert [r["val_loss"] for r in plain.state.rows] == [r["val_loss"] for r in inert.state.rows]


# ---------------------------------------------------------------------- rollback
def test_rollback_restores_the_snapshot_exactly_and_decays_the_rates(tmp_path):
    snaps = Snapshots()
    t = Trainer(_config("protocol.rollback=3", runs_dir=tmp_path), tmp_path / "run",
                callbacks=[Corrupt({35}), snaps])
    base = {g: opt.lr for g, opt in t.engine.optimizers.items()}
    s = t.run()
    assert s["status"] == "completed" and s["batches_done"] == 60 and s["rollbacks"] == 1
    ev = s["stability"]["events"]
    assert len(ev) == 1 and ev[0]["action"] == "rollback" and ev[0]["batch"] == 40
    assert ev[0]["restored_batch"] == 30 and "validation loss" in ev[0]["reason"]
    by_batch = {b: (n, p, o, lr) for b, n, p, o, lr in snaps.points}
    n30, p30, o30, _ = by_batch[30]
    n40, p40, o40, lr40 = by_batch[40]
    assert (n30, n40) == (0, 1)
    _assert_same_params(p30, p40)  # the parameters of the last healthy point, exactly
    for g in o30:
        assert o30[g]["t"] == o40[g]["t"] > 0
        for k in o30[g]:
            if k != "t":
                np.testing.assert_array_equal(o30[g][k], o40[g][k], err_msg=f"{g}/{k}")
    assert lr40 == {g: v * 0.5 for g, v in base.items()}
    assert s["stability"]["lrs"] == lr40
    # the unhealthy point stays in the metrics but not in the best values; the counters are columns
    rows = t.state.rows
    assert [r["rollbacks"] for r in rows] == [0, 0, 0, 0, 1, 1, 1]
    assert rows[4]["val_loss"] > 3 * s["best"]["val_loss"] and s["best"]["val_loss_batch"] != 40
    m = read_metrics_csv(tmp_path / "run" / "metrics.csv")
    assert set(ROW_COLUMNS) <= set(m) and m["rollbacks"].tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert m["lr_factor"].tolist() == [1, 1, 1, 1, 0.5, 0.5, 0.5]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["rollbacks"] == 1


def test_a_divergence_rolls_back_and_the_batch_counts():
    t = Trainer(_config("protocol.rollback=3"), callbacks=[Corrupt({35}, how="nan")])
    s = t.run()
    assert s["status"] == "completed" and s["batches_done"] == 60 and s["rollbacks"] == 1
    ev = s["stability"]["events"][0]
    assert ev["batch"] == 36 and ev["reason"].startswith("diverged at batch 36") and ev["restored_batch"] == 30
    assert all(np.isfinite(v).all() for v in t.model.params.values())
    # without rollback the same corruption is a divergence
    bad = Trainer(_config(), callbacks=[Corrupt({35}, how="nan")]).run()
    assert bad["status"] == "diverged"


def test_rollbacks_are_capped_and_the_run_stops_with_the_healthy_state():
    snaps = Snapshots()
    t = Trainer(_config("protocol.rollback=3", "protocol.max_rollbacks=2", "protocol.rollback_lr_decay=0.25"),
                callbacks=[Corrupt({15, 25, 35}), snaps])
    s = t.run()
    assert s["status"] == "aborted" and s["batches_done"] == 40 and s["rollbacks"] == 2
    assert "protocol.max_rollbacks = 2" in s["reason"] and "batch 10" in s["reason"]
    assert [e["action"] for e in s["stability"]["events"]] == ["rollback", "rollback", "stop"]
    assert s["stability"]["lr_factor"] == 0.25 ** 2
    _assert_same_params(dict(snaps.points[1][2]), _params(t))  # the point at batch 10, the last healthy one


def test_health_rules():
    t = Trainer(_config("protocol.rollback=10", "protocol.rollback_floor=0.05", "protocol.rollback_window=3"))
    st = t.stability
    row = {"val_loss": 0.01, "reconstruction_loss": 1.0, "local_loss": 0.02}
    assert st.problem(row, best_val_loss=0.5) is None
    assert st.problem(dict(row, val_loss=math.nan), 0.5).startswith("the validation loss is not finite")
    assert "validation loss 0.2" in st.problem(dict(row, val_loss=0.2), 0.01)   # 20 x best, above the floor
    assert st.problem(dict(row, val_loss=0.04), 0.001) is None                # 40 x best, below the floor
    # the watched losses need min(3, window) healthy values before they are judged
    for x in (1e-3, 2e-3, 4e-3):
        assert st.problem(dict(row, local_loss=0.06), 0.5) is None   # not judged yet: too few values
        st.healthy(dict(row, local_loss=x), 0)
    assert st.state.history["local_loss"] == [1e-3, 2e-3, 4e-3]
    assert st.problem(dict(row, local_loss=0.03), 0.5) is None    # 15 x the median 2e-3, below the floor
    assert "local loss 0.06" in st.problem(dict(row, local_loss=0.06), 0.5)  # 30 x, above the floor
    assert st.problem(dict(row, local_loss=0.015), 0.5) is None    # 7.5 x
    assert "not finite" in st.problem(dict(row, local_loss=math.inf), 0.5)
    assert "not finite" in st.problem(dict(row, local_loss=math.nan), 0.5)  # NaN after being finite
    st.healthy(dict(row, local_loss=1.0), 0)
    assert st.state.history["local_loss"] == [2e-3, 4e-3, 1.0]   # the window keeps the last 3


# ---------------------------------------------------------------------- spectral control
def test_spectral_control_keeps_the_radius_at_the_limit_on_check_batches():
    class Radii(Callback):
        def __init__(self):
            self.seen = []

        def on_batch(self, trainer, batch, loss):
            if batch % 5 == 0:
                self.seen.append([spectral_radius(trainer.model.params[n]) for n in ("W_h", "V_h")])

    rec = Radii()
    t = Trainer(_config("protocol.spectral_limit=0.95", "protocol.spectral_every=5"), callbacks=[rec])
    s = t.run()
    assert len(rec.seen) == 12
    assert np.max(rec.seen) <= 0.95 * (1 + 1e-5)
    assert np.max(rec.seen) >= 0.95 * (1 - 1e-5)   # orthogonal start (radius 1): rescaled to the limit
    sp = s["stability"]["spectral"]
    assert sp["checks"] == 12 and sp["rescales"] >= 2 and sp["ms_per_batch_this_session"] > 0
    assert max(r["spectral_radius_W_h"] for r in t.state.rows[1:]) <= 0.95 * (1 + 1e-5)
    # a limit above the radii leaves the weights untouched, bit for bit
    high = Trainer(_config("protocol.spectral_limit=5"))
    high.run()
    plain = Trainer(_config())
    plain.run()
    _assert_same_params(_params(high), _params(plain))


def test_radius_bound_is_an_upper_bound_and_tight_near_orthogonal():
    rng = np.random.default_rng(0)
    for n in (2, 8, 40):
        for scale in (0.1, 1.0, 30.0):
            w = scale * rng.standard_normal((n, n))
            w[np.tril_indices(n, -1)] *= 0.1   # non-normal
            rho = spectral_radius(w)
            assert rho <= radius_bound(w) * (1 + 1e-12)
    q = np.linalg.qr(rng.standard_normal((64, 64)))[0] * 1.2
    assert spectral_radius(q) <= radius_bound(q) <= 1.05 * spectral_radius(q)
    assert radius_bound(np.zeros((3, 3))) == 0.0 and math.isnan(radius_bound(np.full((2, 2), np.nan)))


# ---------------------------------------------------------------------- lr warm-up and decay
class _Rates(Callback):
    """The learning rate of every group that each batch trained with (read after the batch)."""

    def __init__(self):
        self.lrs = {}

    def on_batch(self, trainer, batch, loss):
        self.lrs[batch] = {g: opt.lr for g, opt in trainer.engine.optimizers.items()}


def test_lr_warmup_ramps_the_forward_and_output_rates_after_the_inverse_warmup():
    rec = _Rates()
    t = Trainer(_config("protocol.lr_warmup=8", "protocol.n_batches=30"), callbacks=[rec])
    t.run()
    o = t.config.optimizer
    for b in range(1, 31):
        k = min(max(b - 10, 1), 8)   # the k-th forward batch; warm-up batches (no forward update) hold 1/8
        lrs = rec.lrs[b]
        for g in ("W_xh", "W_h", "b_h"):
            assert lrs[g] == o.lr_f * (k / 8), (b, g)
        for g in ("W_hy", "b_y"):
            assert lrs[g] == o.lr_y * (k / 8), (b, g)
        assert lrs["V_h"] == lrs["c_h"] == o.lr_g
    assert rec.lrs[18]["W_h"] == rec.lrs[30]["W_h"] == o.lr_f
    # BPTT has no inverse warm-up: its ramp starts at the first batch
    b = Trainer(_config("method.name=bptt", "protocol.lr_warmup=4", "protocol.n_batches=10"), callbacks=[_Rates()])
    b.run()
    assert b.callbacks[0].lrs[1]["W_h"] == o.lr_f / 4 and b.callbacks[0].lrs[4]["W_h"] == o.lr_f


def _reference_decay(kind, k, start, n, final):
    """The decay factor of 0-based batch k, written out from the formulas of the docs."""
    if k <= start:
        return 1.0
    u = (k - start) / (n - 1 - start)
    return final + (1 - final) * (1 + np.cos(np.pi * u)) / 2 if kind == "cosine" else 1 - (1 - final) * u


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_lr_decay_scales_the_forward_and_output_rates_but_not_the_inverse(kind):
    rec = _Rates()
    t = Trainer(_config(f"protocol.lr_decay={kind}", "protocol.lr_decay_final=0.1", "protocol.n_batches=30"),
                callbacks=[rec])
    summary = t.run()
    o = t.config.optimizer
    for b in range(1, 31):   # batch b (1-based) is 0-based batch b - 1; the decay starts after the warm-up (10)
        f = _reference_decay(kind, b - 1, 10, 30, 0.1)
        for g in ("W_xh", "W_h", "b_h"):
            assert rec.lrs[b][g] == pytest.approx(o.lr_f * f, rel=1e-12), (b, g)
        for g in ("W_hy", "b_y"):
            assert rec.lrs[b][g] == pytest.approx(o.lr_y * f, rel=1e-12), (b, g)
        assert rec.lrs[b]["V_h"] == rec.lrs[b]["c_h"] == o.lr_g
    assert rec.lrs[11]["W_h"] == o.lr_f and rec.lrs[30]["W_h"] == pytest.approx(0.1 * o.lr_f, rel=1e-12)
    assert summary["stability"]["lr_decay"] == {"kind": kind, "start": 10, "final": 0.1}


def test_lr_decay_start_and_the_warmup_ramp_multiply():
    rec = _Rates()
    t = Trainer(_config("protocol.lr_decay=linear", "protocol.lr_decay_start=20", "protocol.lr_decay_final=0.2",
                        "protocol.lr_warmup=4", "protocol.n_batches=40"), callbacks=[rec])
    summary = t.run()
    o = t.config.optimizer
    for b in range(1, 41):
        k = b - 1
        ramp = min(max(k - 10, 0) + 1, 4) / 4
        assert rec.lrs[b]["W_h"] == pytest.approx(o.lr_f * ramp * _reference_decay("linear", k, 20, 40, 0.2),
                                                  rel=1e-12), b
    assert rec.lrs[40]["W_h"] == pytest.approx(0.2 * o.lr_f, rel=1e-12) and rec.lrs[40]["V_h"] == o.lr_g
    assert summary["stability"]["lr_decay"] == {"kind": "linear", "start": 20, "final": 0.2}
    # BPTT: no inverse warm-up, so by default the decay starts at the first batch
    b = Trainer(_config("method.name=bptt", "protocol.lr_decay=cosine", "protocol.lr_decay_final=0.5",
                        "protocol.n_batches=11"), callbacks=[_Rates()])
    b.run()
    assert b.callbacks[0].lrs[1]["W_h"] == o.lr_f
    assert b.callbacks[0].lrs[6]["W_h"] == pytest.approx(0.75 * o.lr_f, rel=1e-12)
    assert b.callbacks[0].lrs[11]["W_h"] == pytest.approx(0.5 * o.lr_f, rel=1e-12)


def test_lr_decay_changes_training_only_after_its_start():
    plain = Trainer(_config("protocol.n_batches=40"))
    plain.run()
    late = Trainer(_config("protocol.n_batches=40", "protocol.lr_decay=cosine", "protocol.lr_decay_start=39"))
    late.run()   # starts at the last batch, whose factor is 1: switched on, it changes nothing before it acts
    _assert_same_params(_params(plain), _params(late))
    decayed = Trainer(_config("protocol.n_batches=40", "protocol.lr_decay=cosine"))
    decayed.run()
    assert not np.array_equal(decayed.model.params["W_h"], plain.model.params["W_h"])


def test_resume_mid_lr_decay_matches_an_uninterrupted_run(tmp_path):
    sets = ["protocol.lr_decay=cosine", "protocol.n_batches=80", "output.checkpoint_every=15"]
    full = Trainer(_config(*sets))
    sf = full.run()
    part, resumed = _interrupted(sets, 45, tmp_path)
    sr = resumed.run()
    _assert_same_params(_params(full), _params(resumed))
    assert sr["final"]["val_loss"] == sf["final"]["val_loss"] and sr["stability"]["lrs"] == sf["stability"]["lrs"]


# ---------------------------------------------------------------------- resume
def _interrupted(cfg_sets, stop_at, tmp_path, callbacks=()):
    cfg = _config(*cfg_sets, runs_dir=tmp_path)
    part = Trainer(cfg, tmp_path / "run", callbacks=[*callbacks, StopAtCheckpoint(stop_at)])
    assert part.run()["status"] == "aborted" and part.state.batch == stop_at
    resumed = Trainer.resume(tmp_path / "run", callbacks=list(callbacks))
    assert resumed.state.batch == stop_at
    return part, resumed


def test_resume_mid_lr_warmup_matches_an_uninterrupted_run(tmp_path):
    sets = ["protocol.lr_warmup=40", "protocol.n_batches=80", "output.checkpoint_every=15"]
    full = Trainer(_config(*sets))
    sf = full.run()
    part, resumed = _interrupted(sets, 30, tmp_path)   # ramp batches 11..50: stopped at its middle
    lrs = {g: opt.lr for g, opt in resumed.engine.optimizers.items()}
    assert lrs == {g: opt.lr for g, opt in part.engine.optimizers.items()} and lrs["W_h"] < 0.003
    sr = resumed.run()
    _assert_same_params(_params(full), _params(resumed))
    assert sr["final"]["val_loss"] == sf["final"]["val_loss"] and sr["stability"]["lrs"] == sf["stability"]["lrs"]


def test_resume_after_a_rollback_matches_an_uninterrupted_run(tmp_path):
    # a rollback at point 30 (before the checkpoint at 45), another at point 50 after resuming, back to the
    # snapshot of point 40 that the checkpoint carried; spectral control and the lr ramp are on as well
    sets = ["protocol.rollback=3", "protocol.n_batches=80", "output.checkpoint_every=15",
            "protocol.spectral_limit=0.97", "protocol.spectral_every=4", "protocol.lr_warmup=12"]
    full = Trainer(_config(*sets), callbacks=[Corrupt({25, 47})])
    sf = full.run()
    assert sf["rollbacks"] == 2 and [e["restored_batch"] for e in sf["stability"]["events"]] == [20, 40]
    _, resumed = _interrupted(sets, 45, tmp_path, callbacks=[Corrupt({25, 47})])
    assert resumed.stability.state.rollbacks == 1 and resumed.stability.state.snapshot_batch == 40
    sr = resumed.run()
    _assert_same_params(_params(full), _params(resumed))
    assert sr["rollbacks"] == 2 and sr["stability"]["events"] == sf["stability"]["events"]
    assert sr["stability"]["spectral"]["rescales"] == sf["stability"]["spectral"]["rescales"]
    cols = ("val_loss",) + ROW_COLUMNS
    assert [[r[c] for c in cols] for r in resumed.state.rows] == [[r[c] for c in cols] for r in full.state.rows]
    doc = json.loads((tmp_path / "run" / "checkpoint" / "checkpoint.json").read_text())
    assert doc["state"]["stability"]["state"]["rollbacks"] == 2


# ---------------------------------------------------------------------- config and clip
@pytest.mark.parametrize("item, key", [
    ("protocol.rollback=1.0", "protocol.rollback"),
    ("protocol.rollback=-3", "protocol.rollback"),
    ("protocol.rollback_lr_decay=1.5", "protocol.rollback_lr_decay"),
    ("protocol.rollback_lr_decay=0", "protocol.rollback_lr_decay"),
    ("protocol.max_rollbacks=0", "protocol.max_rollbacks"),
    ("protocol.rollback_window=0", "protocol.rollback_window"),
    ("protocol.rollback_floor=-1", "protocol.rollback_floor"),
    ("protocol.spectral_limit=0", "protocol.spectral_limit"),
    ("protocol.spectral_every=0", "protocol.spectral_every"),
    ("protocol.lr_warmup=-1", "protocol.lr_warmup"),
    ("protocol.lr_decay=step", "protocol.lr_decay"),
    ("protocol.lr_decay_final=1.5", "protocol.lr_decay_final"),
    ("protocol.lr_decay_final=0", "protocol.lr_decay_final"),
    ("protocol.lr_decay_start=-1", "protocol.lr_decay_start"),
    ("method.clip=0", "method.clip"),
    ("method.clip=0.5", "method.clip"),   # with method.merge = linear
])
def test_config_errors_name_the_key(item, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        apply_overrides(Config(), [item])


def test_options_are_plain_config_keys():
    cfg = apply_overrides(Config(), ["protocol.rollback=10", "protocol.spectral_limit=none", "method.merge=clipped",
                                     "method.clip=0.3"])
    d = cfg.to_dict()
    assert d["protocol"]["rollback"] == 10.0 and "spectral_limit" not in d["protocol"]
    assert d["method"]["clip"] == 0.3 and Config.from_dict(d) == cfg


def test_method_clip_sets_the_clipped_merges_threshold():
    assert clipped_merge(1.0) == "clipped" and clipped_merge(1) == "clipped"
    name = clipped_merge(0.25)
    assert name == clipped_merge(0.25) and get_merge(name).params.tolist() == [0.25]
    assert get_merge(name).fn is get_merge("clipped").fn   # shares the compiled kernel
    t = Trainer(_config("method.merge=clipped", "method.clip=0.02", "protocol.n_batches=30"))
    assert {m.name for m in t.engine.jit_merges.values()} == {"clipped(max_norm=0.02)"}
    t.run()
    one = Trainer(_config("method.merge=clipped", "method.clip=1", "protocol.n_batches=30"))
    one.run()
    ref = Trainer(_config("method.merge=clipped", "protocol.n_batches=30"))
    ref.run()
    _assert_same_params(_params(one), _params(ref))   # clip = 1 is the plain "clipped" merge
    assert not np.array_equal(t.model.params["W_h"], ref.model.params["W_h"])


# ---------------------------------------------------------------------- diagnose
def test_diagnose_finds_a_collapse_and_what_jumped(tmp_path):
    rows = []
    for i in range(12):
        collapsed = i >= 8
        rows.append({"batch": 250 * i, "train_loss": 0.0, "val_loss": 0.3 if collapsed else 1e-3 / (i + 1),
                     "step_acc": 1.0, "seq_acc": 0.0 if collapsed else 1.0,
                     "spectral_radius_W_h": 1.03, "spectral_radius_V_h": 1.4 if collapsed else 1.03,
                     "reconstruction_loss": 1.0, "local_loss": 50.0 if collapsed else 1e-4, "elapsed_s": 1.0})
    write_metrics_csv(tmp_path / "metrics.csv", rows)
    atomic_write_json(tmp_path / "summary.json", {"baseline_loss": 0.4621})
    d = diagnose(tmp_path)
    assert len(d.collapses) == 1
    c = d.collapses[0]
    assert c.batch == 2000 and c.previous_batch == 1750 and c.recovered_batch is None
    assert c.jumped() == ["local_loss", "spectral_radius_V_h"] and not c.rolled_back
    assert "Collapse at batch 2000" in d.text and "the local loss, rho(V_h)" in d.text
    # a rollback at the collapse point is read from the rollbacks column
    write_metrics_csv(tmp_path / "metrics.csv", [dict(r, rollbacks=int(r["batch"] >= 2000)) for r in rows],
                      METRIC_COLUMNS + ("rollbacks",))
    d = diagnose(tmp_path)
    assert d.collapses[0].rolled_back and d.rollbacks == 1 and "Rolled back there" in d.text
    # no collapse without having been far below the baseline first
    write_metrics_csv(tmp_path / "metrics.csv", [dict(r, val_loss=0.3) for r in rows])
    assert diagnose(tmp_path).collapses == [] and "No collapse" in diagnose(tmp_path).text
