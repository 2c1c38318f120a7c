"""tpgraph research: variants searched like their baselines, one table, the written reading kept."""

import csv
from pathlib import Path

import numpy as np
import pytest

from tpgraph.errors import ConfigError
from tpgraph.studies.research import (CSV_COLUMNS, RESEARCH_BUDGETS, TASKS, VARIANTS, _final_run_dir, _root_for, _spec,
                                      inspect_cell, run_variant, write_table)
from tpgraph.train.records import load_npz, read_summary
from tpgraph.studies.spec import parse_spec


def test_every_variant_builds_valid_specs_for_every_task():
    for v in VARIANTS.values():
        for cells in TASKS.values():
            if not v.applies_to(cells.task):
                with pytest.raises(ConfigError, match=f"variant '{v.name}' is for"):
                    run_variant(v.name, cells.task, "unused", RESEARCH_BUDGETS["smoke"])
                continue
            for stage in ("search", "final"):
                spec = parse_spec(_spec(v, cells, RESEARCH_BUDGETS["research"], stage, cells.values))
                assert spec is not None
    assert VARIANTS["truncate_10"].base() == {"method": {"name": "tp", "truncate": 10}}
    # BPTT searches only what it has: no inverse learning rate, no target step
    bptt = _spec(VARIANTS["bptt"], TASKS["copy_memory"], RESEARCH_BUDGETS["research"], "search", (50,))
    assert "optimizer.lr_g" not in bptt["space"] and "method.alpha" not in bptt["space"]


def test_unknown_variant_and_task_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown variant 'nope'"):
        run_variant("nope", "copy_memory", tmp_path, RESEARCH_BUDGETS["smoke"])
    with pytest.raises(ConfigError, match="unknown research task"):
        run_variant("baseline", "adding", tmp_path, RESEARCH_BUDGETS["smoke"])


def test_smoke_comparison_writes_the_table_and_keeps_the_reading(tmp_path):
    budget = RESEARCH_BUDGETS["smoke"]
    for v in ("baseline", "truncate_10"):
        run_variant(v, "copy_memory", tmp_path / "s", budget, values=(50,), scheduler="serial", say=lambda s: None)
    out = tmp_path / "out"
    out.mkdir()
    (out / "research.md").write_text("# Title\n\nMy reading.\n\n<!-- research-table:start -->\nold\n"
                                     "<!-- research-table:end -->\n\nMore prose.\n")
    res = write_table(tmp_path / "s", out, budget, command="test")
    rows = list(csv.DictReader((out / "research.csv").open()))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [(r["variant"], r["method"], r["T"], r["seeds"]) for r in rows] == [  # budgets other than research: labelled
        ("baseline@smoke", "tp", "50", str(budget.final_seeds)), ("truncate_10@smoke", "tp", "50", str(budget.final_seeds))]
    for r in rows:
        assert 0 <= float(r["final_val_accuracy"]) <= 100 and float(r["ms_per_batch"]) > 0
        assert float(r["baseline_loss"]) == pytest.approx(10 * 2.0794415416798357 / 70)
    md = (out / "research.md").read_text()
    assert "My reading." in md and "More prose." in md and "old" not in md
    assert "| 50 | truncate_10@smoke | tp |" in md and "Rows marked `@smoke`: budget 'smoke'" in md
    # a plot per cell and budget
    assert (out / "research" / "copy_memory_T50_smoke.png").stat().st_size > 1000
    assert "(research/copy_memory_T50_smoke.png)" in md
    # the truncated runs really were truncated
    assert res["rows"][1]["variant"] == "truncate_10@smoke"
    # inspection re-runs the first final seed: the same seed retraces the same validation curve
    info = inspect_cell(tmp_path / "s", "baseline", "copy_memory", 50, points=4)
    root = _root_for(tmp_path / "s", "baseline", "copy_memory", 50)
    assert root.name == "copy_memory-50"  # a subset of the lengths has a folder of its own
    first = read_summary(_final_run_dir(root, "task.delay", 50) / "summary.json")
    assert info["best_val_loss"] == first["best"]["val_loss"]
    assert info["final_val_loss"] == first["final"]["val_loss"]
    assert 0.0 <= info["angle_W_h_late"] <= 180.0
    # the inverse's distance from the transpose, from the inspected run's final weights
    w = load_npz(Path(info["run_dir"]) / "weights.npz")
    assert info["transpose_gap"] == pytest.approx(np.linalg.norm(w["V_h"] - w["W_h"].T) / np.linalg.norm(w["W_h"]))


def testtranspose_gap(tmp_path):
    from tpgraph.studies.research import transpose_gap

    W = np.random.default_rng(0).normal(size=(4, 4))
    assert np.isnan(transpose_gap(tmp_path))  # no weights
    for V, want in ((W.T, 0.0), (np.zeros((4, 4)), 1.0), (2 * W.T, 1.0)):
        np.savez(tmp_path / "weights.npz", V_h=V, W_h=W)
        assert transpose_gap(tmp_path) == pytest.approx(want)
    np.savez(tmp_path / "weights.npz", W_h=W)  # BPTT, the analytic inverse: no V_h
    assert np.isnan(transpose_gap(tmp_path))


def test_table_keeps_earlier_rows_and_redraws_plots_from_stored_curves(tmp_path):
    """A new folder's studies join the earlier research.json's rows; a cell it measures replaces the old row."""
    import json

    budget = RESEARCH_BUDGETS["smoke"]
    out = tmp_path / "out"
    run_variant("baseline", "copy_memory", tmp_path / "a", budget, values=(50,), scheduler="serial", say=lambda s: None)
    first = write_table(tmp_path / "a", out, budget, command="test")
    old = first["rows"][0]
    assert old["curve"]["batch"] and len(old["curve"]["batch"]) == len(old["curve"]["val_loss"])
    # a second checkout: the baseline's folder is gone, only the new variant's study is there
    run_variant("clip", "copy_memory", tmp_path / "b", budget, values=(50,), scheduler="serial", say=lambda s: None)
    doc = json.loads((out / "research.json").read_text())
    doc["rows"][0]["date"] = "2026-11-30"  # as if measured on another day
    (out / "research.json").write_text(json.dumps(doc))
    res = write_table(tmp_path / "b", out, budget, command="test")
    assert [r["variant"] for r in res["rows"]] == ["baseline@smoke", "clip@smoke"]
    assert [r["variant"] for r in res["kept"]] == ["baseline@smoke"]
    kept = res["rows"][0]
    assert kept["best_val_loss"] == old["best_val_loss"] and kept["date"] == "2026-11-30"
    csv_rows = list(csv.DictReader((out / "research.csv").open()))
    assert [r["variant"] for r in csv_rows] == ["baseline@smoke", "clip@smoke"]
    md = (out / "research.md").read_text()
    assert "1 of the 2 rows are not in this command's folder" in md and "2026-11-30 (" in md and "1 row of baseline@smoke" in md
    assert "plot copy_memory 50 @smoke" in res["files"]  # both rows carry curves: redrawn with both
    # without keep, only the folder's rows
    assert [r["variant"] for r in write_table(tmp_path / "b", tmp_path / "o2", budget, keep=False)["rows"]] == [
        "clip@smoke"]


def test_table_keeps_the_plot_when_a_kept_row_has_no_curve(tmp_path):
    import json

    budget = RESEARCH_BUDGETS["smoke"]
    out = tmp_path / "out"
    run_variant("baseline", "copy_memory", tmp_path / "a", budget, values=(50,), scheduler="serial", say=lambda s: None)
    write_table(tmp_path / "a", out, budget)
    doc = json.loads((out / "research.json").read_text())
    del doc["rows"][0]["curve"]  # a row from before curves were stored
    (out / "research.json").write_text(json.dumps(doc))
    plot = out / "research" / "copy_memory_T50_smoke.png"
    plot.write_bytes(b"earlier plot")
    run_variant("clip", "copy_memory", tmp_path / "b", budget, values=(50,), scheduler="serial", say=lambda s: None)
    res = write_table(tmp_path / "b", out, budget)
    assert [r["variant"] for r in res["rows"]] == ["baseline@smoke", "clip@smoke"]
    assert plot.read_bytes() == b"earlier plot" and "plot copy_memory 50 @smoke" not in res["files"]
    (out / "research.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not a research table"):
        write_table(tmp_path / "b", out, budget)


def test_a_budget_start_is_every_search_first_trial_and_rows_of_two_budgets_share_the_table(tmp_path):
    """``Budget.start`` is enqueued in every group (only the keys the variant searches); unmarked rows keep theirs."""
    import dataclasses
    import json

    from tpgraph.studies.runner import Study

    start = (("optimizer.lr_f", 1.5e-3), ("optimizer.lr_g", 2e-3), ("method.alpha", 0.25))
    budget = dataclasses.replace(RESEARCH_BUDGETS["smoke"], start=start)
    assert "first trial optimizer.lr_f=0.0015, optimizer.lr_g=0.002, method.alpha=0.25" in budget.describe()
    for v in ("baseline", "bptt"):
        run_variant(v, "copy_memory", tmp_path / v, budget, values=(50,), scheduler="serial", say=lambda s: None)
    first = {v: Study.open(tmp_path / v / v / "copy_memory-50" / "search").optuna_studies()[0].study.trials[0].params
             for v in ("baseline", "bptt")}
    assert {k: first["baseline"][k] for k, _ in start} == pytest.approx(dict(start))
    assert set(first["baseline"]) == {"optimizer.lr_f", "optimizer.lr_g", "optimizer.lr_y", "method.alpha"}
    assert set(first["bptt"]) == {"optimizer.lr_f", "optimizer.lr_y"}  # BPTT has no lr_g or alpha
    assert first["bptt"]["optimizer.lr_f"] == pytest.approx(1.5e-3)
    # an earlier table of the research budget: its unmarked rows stay next to the new budget's labelled ones
    out = tmp_path / "out"
    out.mkdir()
    earlier = write_table(tmp_path / "baseline", tmp_path / "tmp", budget)["rows"][0]
    (out / "research.json").write_text(json.dumps({"meta": {"date": "2026-11-30", "machine": "m"},
                                                   "rows": [{**earlier, "variant": "baseline"}]}))
    res = write_table(tmp_path / "bptt", out, budget)
    assert [r["variant"] for r in res["rows"]] == ["baseline", "bptt@smoke"]
    md = (out / "research.md").read_text()
    assert "Rows without a mark: budget 'research'" in md and "Rows marked `@smoke`: budget 'smoke'" in md


def test_inspection_keeps_cells_inspected_before(tmp_path):
    from tpgraph.studies.research import write_inspection

    budget = RESEARCH_BUDGETS["smoke"]
    for v in ("baseline", "clip"):
        run_variant(v, "copy_memory", tmp_path / "s", budget, values=(50,), scheduler="serial", say=lambda s: None)
    out = tmp_path / "out"
    first = write_inspection(tmp_path / "s", out, [("baseline", "copy_memory", 50)], budget="smoke", say=lambda s: None)
    assert [i["variant"] for i in first["cells"]] == ["baseline@smoke"]
    # the error by position is the final weights' on the validation set: its mean is the final step accuracy's
    cell = first["cells"][0]
    final = read_summary(tmp_path / "s" / "baseline" / "copy_memory-50" / "inspect" / "T-50" / "summary.json")["final"]
    assert len(cell["position_error"]) == 50 + 20
    assert 100.0 - sum(cell["position_error"]) / 70 == pytest.approx(100.0 * final["step_acc"], abs=1e-3)
    assert len(cell["error_thirds"]) == 3 and min(cell["position_error"]) <= cell["error_thirds"][1]
    # an inspection interrupted part-way (a summary that stops short of the final run) is redone, not reused
    import json

    spath = tmp_path / "s" / "baseline" / "copy_memory-50" / "inspect" / "T-50" / "summary.json"
    doc = json.loads(spath.read_text())
    spath.write_text(json.dumps({**doc, "status": "aborted", "reason": "interrupted (SIGTERM) at batch 20",
                                 "batches_done": 20}))
    again = write_inspection(tmp_path / "s", out, [("baseline", "copy_memory", 50)], budget="smoke", say=lambda s: None)
    assert read_summary(spath)["batches_done"] == budget.final_batches and read_summary(spath)["status"] != "aborted"
    assert again["cells"][0]["best_val_loss"] == cell["best_val_loss"]
    res = write_inspection(tmp_path / "s", out, [("clip", "copy_memory", 50)], budget="smoke", say=lambda s: None)
    assert [i["variant"] for i in res["cells"]] == ["baseline@smoke", "clip@smoke"]
    assert res["cells"][0]["best_val_loss"] == first["cells"][0]["best_val_loss"]
    md = (out / "research.md").read_text()
    assert "| copy memory | 50 | baseline@smoke |" in md and "| copy memory | 50 | clip@smoke |" in md
    fresh = write_inspection(tmp_path / "s", out, [("clip", "copy_memory", 50)], budget="smoke", keep=False,
                             say=lambda s: None)
    assert [i["variant"] for i in fresh["cells"]] == ["clip@smoke"]


def test_a_cell_plot_gives_each_variant_one_colour_in_both_panels(tmp_path, monkeypatch):
    import matplotlib.figure

    from tpgraph.studies.research import plot_cell

    saved = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, path, **kw: (saved.append(fig),
                                                                                      open(path, "wb").close()))
    curve = {"batch": [0, 250, 500], "val_loss": [1.0, 0.5, 0.2]}
    angle = {"batch": [250, 500], "angle_W_h": [70.0, 65.0]}
    rows = [{"task": "copy_memory", "T": 50, "method": m, "variant": v, "baseline_loss": 0.3, "curve": curve,
             **({"angle_curve": angle} if a else {})}
            for v, m, a in [("bptt", "bptt", True), ("baseline", "tp", False), ("noise_0.1", "tp", True)]]
    assert plot_cell(rows, "copy_memory", 50, tmp_path / "cell.png") is not None
    left, right = saved[0].axes
    colours = {ln.get_label(): ln.get_color() for ln in left.lines if not ln.get_label().startswith("memoryless")}
    assert len(set(map(str, colours.values()))) == 3
    angles = {ln.get_label(): ln.get_color() for ln in right.lines if not ln.get_label().startswith("_")}
    assert list(angles) == ["noise_0.1"]   # BPTT's angle is 0 by definition and is not drawn
    assert angles["noise_0.1"] == colours["noise_0.1"]
