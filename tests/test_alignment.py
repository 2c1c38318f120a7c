"""Alignment angles (tpgraph.alignment): TP/FA updates and displacements against the gradient."""

import math

import numpy as np
import pytest

import tpgraph as tp
from tpgraph.alignment import alignment, angle, reference_engine
from test_rules import mlp  # the same small two-layer graph the rule tests use


def batch(B=8, seed=0):
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(B, 4)), "label": rng.integers(0, 3, B)}


def numpy_mlp(P, F, x, label, alpha):
    """Displacements and local gradients with feedback matrices ``F`` (``F = P``: backpropagation)."""
    n = x.shape[0]
    h1 = np.tanh(x @ P["W1"].T + P["b1"])
    h2 = np.tanh(h1 @ P["W2"].T + P["b2"])
    z = h2 @ P["W3"].T + P["b3"]
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    dz = -alpha * (p - np.eye(3)[label]) / n
    d2 = dz @ F["W3"]
    d1 = ((1 - h2 ** 2) * d2) @ F["W2"]
    disp = {"y": dz, "h2": d2, "h1": d1}
    grads = {}
    for i, (d, inp, deriv) in {"1": (d1, x, 1 - h1 ** 2), "2": (d2, h1, 1 - h2 ** 2), "3": (dz, h2, 1.0)}.items():
        delta = -d * deriv
        grads["W" + i], grads["b" + i] = delta.T @ inp, delta.sum(0)
    return disp, grads


def numpy_angle(a, b):
    a, b = a.ravel(), b.ravel()
    return np.degrees(np.arccos(np.clip(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), -1, 1)))


def test_angle_helper():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    assert angle(a, b) == pytest.approx(numpy_angle(a, b), abs=1e-9)
    assert angle(a, 3 * a) == pytest.approx(0.0, abs=1e-12)
    assert angle(a, -a) == pytest.approx(180.0, abs=1e-9)
    assert np.isnan(angle(a, np.zeros_like(a)))
    assert angle(np.array([1.0, 0]), np.array([0, 2.0])) == pytest.approx(90.0)


@pytest.mark.parametrize("alpha", [0.05, 0.7])
def test_angles_are_zero_when_every_edge_uses_gradient(alpha):
    g = tp.build_srn(6, 4, 7, 4, dtype="float64").with_rules("gradient")
    eng = tp.Engine(g, alpha=alpha, seed=2)
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 4, (6, 5)), rng.integers(0, 4, (6, 5))
    b = {("h_0",): np.zeros((1, 5, 7)), tuple(f"x_{t}" for t in range(1, 7)): x,
         tuple(f"l_{t}" for t in range(1, 7)): y}
    a = alignment(eng, b)
    assert set(a.groups) == {"W_xh", "W_h", "b_h", "W_hy", "b_y"}
    for k, v in list(a.groups.items()) + list(a.nodes.items()):
        assert 0.0 <= v < 1e-6, (k, v)
    assert len(a.nodes_with_prefix("h_")) == 6


def test_angles_match_a_numpy_computation_for_fa():
    eng = tp.Engine(mlp(("fa", "fa")), alpha=0.4, seed=1)
    rng = np.random.default_rng(7)
    for k in eng.params:
        eng.params[k] = rng.normal(0, 0.6, eng.params[k].shape)
    P = {k: v.copy() for k, v in eng.params.items()}
    b = batch(seed=5)
    a = alignment(eng, b)
    fa_disp, fa_grads = numpy_mlp(P, eng.feedback, b["x"], b["label"], 0.4)
    bp_disp, bp_grads = numpy_mlp(P, P, b["x"], b["label"], 1.0)
    # arccos near 1 amplifies rounding: an exact 0 degrees comes out as ~1e-6 (CPU-dependent), so 1e-4
    for k in P:
        expect = numpy_angle(fa_grads[k], bp_grads[k])
        assert a.groups[k] == pytest.approx(expect, abs=1e-4), k
    for n in ("h1", "h2", "y"):
        assert a.nodes[n] == pytest.approx(numpy_angle(fa_disp[n], bp_disp[n]), abs=1e-4), n
    assert a.groups["W3"] < 1e-4 and a.nodes["y"] < 1e-4  # the output layer's credit is exact
    assert a.groups["W1"] > 1.0  # the random feedback is not the gradient


def test_alignment_changes_nothing_and_training_is_the_same_with_it():
    def train(measure):
        model = tp.SRN(4, 6, 4, seed=3, noise_sigma=0.2, alpha=0.5, lr_f=1e-2, lr_g=1e-2)
        rng = np.random.default_rng(0)
        angles = []
        for i in range(8):
            x = rng.integers(0, 4, (5, 3))
            if measure and i % 3 == 0:
                angles.append(model.alignment(x, x))
            model.train_step(x, x)
        return model, angles

    plain, _ = train(False)
    measured, angles = train(True)
    for k in plain.params:
        np.testing.assert_array_equal(plain.params[k], measured.params[k], err_msg=k)
    assert plain.engine(5).rng.bit_generator.state == measured.engine(5).rng.bit_generator.state
    assert len(angles) == 3
    for a in angles:
        assert all(0 <= v <= 180 for v in a.nodes_with_prefix("h_"))
        assert set(a.groups) >= {"W_h", "W_xh", "b_h"}


def test_reference_engine_shares_parameters_and_refuses_strangers():
    eng = tp.Engine(mlp(("gradient", "gradient")), seed=0)
    ref = reference_engine(eng)
    assert ref.params is eng.params and all(r == "gradient" for n in ref.graph.nodes if not n.is_data
                                            for r in n.rules if r != "none")
    other = tp.Engine(mlp(("gradient", "gradient")).with_rules("gradient"), seed=0)
    with pytest.raises(ValueError, match="share"):
        alignment(eng, batch(), other)


# ---------------------------------------------------------------- the trainer's optional measurement
def _config(*extra, runs_dir=None):
    from tpgraph.train import Config, apply_overrides

    sets = ["task.delay=2", "model.n_hidden=12", "protocol.n_batches=100", "protocol.warmup=20",
            "protocol.val_batches=3", "protocol.val_every=25", "output.checkpoint_every=50", "output.plots=false"]
    if runs_dir is not None:
        sets.append(f"output.runs_dir={runs_dir}")
    return apply_overrides(Config(), [*sets, *extra])


def test_trainer_logs_alignment_without_changing_training_and_resumes_it(tmp_path):
    from tpgraph.train import Callback, Trainer, read_metrics_csv

    plain = Trainer(_config())
    plain.run()
    full = Trainer(_config("protocol.alignment_every=10", "output.plots=true", runs_dir=tmp_path), tmp_path / "full")
    s = full.run()
    for k, v in plain.model.params.items():
        np.testing.assert_array_equal(v, full.model.params[k], err_msg=k)
    table = read_metrics_csv(tmp_path / "full" / "alignment.csv")
    assert list(table["batch"]) == list(range(10, 101, 10))
    L = full.task.length
    assert {"angle_W_h", "angle_W_xh", "angle_W_hy", "angle_h_mean", f"angle_h_{L}"} <= set(table)
    steps = np.array([table[f"angle_h_{t}"] for t in range(1, L + 1)])
    assert np.all((steps >= 0) & (steps <= 180))
    np.testing.assert_allclose(table["angle_h_mean"], steps.mean(axis=0), rtol=1e-5)
    assert s["alignment"]["measurements"] == 10 and s["alignment"]["ms_per_measurement"] > 0
    assert "alignment.png" in s["plots"] and (tmp_path / "full" / "alignment.png").stat().st_size > 1000

    part = Trainer(_config("protocol.alignment_every=10", runs_dir=tmp_path), tmp_path / "part")

    class StopAtCheckpoint(Callback):
        def on_checkpoint(self, trainer, path):
            trainer.request_stop("test")

    part.callbacks.append(StopAtCheckpoint())
    assert part.run()["status"] == "aborted"
    resumed = Trainer.resume(tmp_path / "part")
    assert [r["batch"] for r in resumed.alignment_rows] == [10, 20, 30, 40, 50]
    resumed.run()
    again = read_metrics_csv(tmp_path / "part" / "alignment.csv")
    for k in table:
        np.testing.assert_array_equal(again[k], table[k], err_msg=k)


def test_fa_run_has_no_warmup():
    from tpgraph.train import Trainer

    t = Trainer(_config("method.credit=fa", "protocol.n_batches=30", "protocol.warmup=50"))
    assert t.warmup == 0
    s = t.run()
    assert s["status"] == "completed" and math.isnan(s["final"]["reconstruction_loss"])


def test_plot_alignment_from_columns_and_errors(tmp_path):
    from tpgraph.errors import TPGraphError
    from tpgraph.plots import plot_alignment

    cols = {"batch": [10, 20, 30], "angle_W_h": [80.0, 60.0, 50.0], "angle_b_h": [85.0, 70.0, 40.0],
            "angle_h_mean": [75.0, 65.0, 55.0], "angle_h_1": [70.0, 60.0, 50.0], "angle_h_2": [80.0, 70.0, 60.0]}
    out = plot_alignment(cols, tmp_path / "a.png", title="test")
    assert out.stat().st_size > 1000
    with pytest.raises(TPGraphError, match="alignment_every"):
        plot_alignment(tmp_path, tmp_path / "b.png")  # a folder without alignment.csv
    with pytest.raises(TPGraphError, match="empty"):
        plot_alignment({"batch": []}, tmp_path / "c.png")
    with pytest.raises(TPGraphError, match="PNG"):
        plot_alignment(cols, tmp_path / "d.svg")
