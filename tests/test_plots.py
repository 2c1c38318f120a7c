"""Tests of tpgraph.plots: PNGs from run folders, labels and legends."""

import math

import numpy as np
import pytest

from tpgraph import plots
from tpgraph.errors import TPGraphError
from tpgraph.train.records import METRIC_COLUMNS, atomic_write_json, write_metrics_csv

PNG = b"\x89PNG\r\n\x1a\n"


def _fake_run(folder, method, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    rows = []
    for i, b in enumerate(range(0, 1001, 100)):
        loss = 2.3 * math.exp(-b / 300) + 1e-3
        rows.append({"batch": b, "train_loss": math.nan if b == 0 else loss * 1.1, "val_loss": loss,
                     "step_acc": min(1.0, 0.1 * i), "seq_acc": min(1.0, 0.05 * i),
                     "spectral_radius_W_h": 1 + 0.01 * i + 0.001 * rng.random(),
                     "spectral_radius_V_h": 1 - 0.01 * i, "reconstruction_loss": math.nan,
                     "local_loss": math.nan, "elapsed_s": 0.1 * i})
    write_metrics_csv(folder / "metrics.csv", rows)
    atomic_write_json(folder / "summary.json", {"method": method, "baseline_loss": 0.8318,
                                                "warmup": 200 if method == "tp" else 0,
                                                "task": {"name": "copy_memory", "delay": 5}})
    return folder


def _axes_of(monkeypatch):
    """Capture the figures the plot functions draw."""
    figures = []
    real = plots._save

    def keep(fig, path):
        figures.append(fig)
        return real(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return figures


def test_loss_plot_has_both_methods_and_the_baseline(tmp_path, monkeypatch):
    figures = _axes_of(monkeypatch)
    runs = [_fake_run(tmp_path / "tp", "tp"), _fake_run(tmp_path / "bptt", "bptt", 1)]
    out = plots.plot_loss(runs, tmp_path / "loss.png")
    assert out.read_bytes()[:8] == PNG
    ax = figures[0].axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "TP validation" in labels and "BPTT training" in labels
    assert any(lab.startswith("memoryless baseline (0.8318)") for lab in labels)
    assert "TP warm-up (inverse only)" in labels
    assert ax.get_yscale() == "log" and ax.get_xlabel() == "training batches"
    assert "delay T = 5" in ax.get_title()


def test_spectral_plot_shows_W_h_and_the_tp_inverse(tmp_path, monkeypatch):
    figures = _axes_of(monkeypatch)
    runs = [_fake_run(tmp_path / "tp", "tp"), _fake_run(tmp_path / "bptt", "bptt")]
    plots.plot_spectral_radius(runs, tmp_path / "rho.png")
    labels = [t.get_text() for t in figures[0].axes[0].get_legend().get_texts()]
    assert labels == ["TP: W_h", "TP: V_h (inverse)", "BPTT: W_h"]
    assert figures[0].axes[0].get_ylabel() == "spectral radius"


def test_overview_and_run_plots(tmp_path):
    run = _fake_run(tmp_path / "tp", "tp")
    assert plots.plot_overview([run], tmp_path / "o.png", title="x").read_bytes()[:8] == PNG
    paths = plots.plot_run(run)
    assert [p.name for p in paths] == ["loss.png", "spectral_radius.png"]
    assert all(p.read_bytes()[:8] == PNG for p in paths)


def test_repeated_labels_get_the_folder_name(tmp_path):
    runs = [plots.load_run(_fake_run(tmp_path / "a", "tp")), plots.load_run(_fake_run(tmp_path / "b", "tp"))]
    labels = plots._labels(runs)
    assert [lab for lab, _ in labels] == ["TP (a)", "TP (b)"] and labels[0][1] != labels[1][1]


def test_plot_errors(tmp_path):
    with pytest.raises(TPGraphError, match="not found"):
        plots.plot_loss([tmp_path / "missing"], tmp_path / "x.png")
    run = _fake_run(tmp_path / "tp", "tp")
    with pytest.raises(TPGraphError, match=".png"):
        plots.plot_loss([run], tmp_path / "x.pdf")
    with pytest.raises(TPGraphError, match="no runs"):
        plots.plot_loss([], tmp_path / "x.png")
    assert list(METRIC_COLUMNS)[0] == "batch"


def test_loss_axis_names_what_the_task_measures():
    from tpgraph.plots import RunData, _loss_label

    def run(name):
        return RunData(name="r", method="tp", metrics={}, task={"name": name})

    assert _loss_label([run("adding")]) == "mean squared error at the last step"
    assert _loss_label([run("temporal_order")]) == "cross-entropy at the last step"
    assert _loss_label([run("copy_memory")]) == "cross-entropy per time step"
    assert _loss_label([run("copy_memory"), run("adding")]) == "cross-entropy per time step"
    # list-valued task options (the marker ranges) do not break the title
    r = RunData(name="r", method="tp", metrics={}, task={"name": "adding", "length": 50,
                                                        "positions": [[0.0, 0.1], [0.1, 0.5]]})
    assert plots._task_title([r, r]) == "adding, length T = 50"
