"""Tests of tpgraph.train.records: atomic writes, metrics.csv, summaries, weight files."""

import csv
import json
import math
import os

import numpy as np
import pytest

from tpgraph.errors import CheckpointError, TPGraphError
from tpgraph.train.records import (METRIC_COLUMNS, atomic_save_npz, atomic_write_bytes, atomic_write_json,
                                   load_npz, read_metrics_csv, read_summary, save_weights, write_metrics_csv)


def _rows(n=3):
    rows = []
    for i in range(n):
        row = {c: 0.1 * (i + 1) + j for j, c in enumerate(METRIC_COLUMNS)}
        row["batch"] = 100 * i
        rows.append(row)
    rows[0]["train_loss"] = math.nan  # nothing trained before the first point
    rows[0]["local_loss"] = math.nan
    return rows


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "f.bin"
    atomic_write_bytes(p, b"old")
    atomic_write_bytes(p, b"new")
    assert p.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["f.bin"]


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002, 0o077])
def test_atomic_writes_honour_the_umask(tmp_path, umask):
    from tpgraph.train.records import current_umask

    old = os.umask(umask)
    try:
        assert current_umask() == umask
        p = tmp_path / "f.bin"
        atomic_write_bytes(p, b"data")
        assert os.stat(p).st_mode & 0o777 == 0o666 & ~umask
        atomic_write_bytes(p, b"again")  # replacing keeps the same mode
        assert os.stat(p).st_mode & 0o777 == 0o666 & ~umask
    finally:
        os.umask(old)


def test_atomic_write_failure_keeps_the_old_file(tmp_path, monkeypatch):
    p = tmp_path / "f.bin"
    atomic_write_bytes(p, b"good")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(p, b"bad")
    assert p.read_bytes() == b"good"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_metrics_csv_parses_with_the_csv_module_and_round_trips(tmp_path):
    rows = _rows()
    p = tmp_path / "metrics.csv"
    write_metrics_csv(p, rows)
    with open(p, newline="") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == list(METRIC_COLUMNS)
    assert len(table) == 3
    assert table[0]["train_loss"] == ""  # NaN is an empty cell
    assert [int(r["batch"]) for r in table] == [0, 100, 200]
    back = read_metrics_csv(p)
    for c in METRIC_COLUMNS:
        want = np.array([r[c] for r in rows], dtype=np.float64)
        np.testing.assert_array_equal(back[c], want)  # exact: floats are written with repr


def test_read_metrics_csv_refuses_other_files(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(TPGraphError, match="not a metrics table"):
        read_metrics_csv(p)
    p.write_text("batch,val_loss\n1,x\n")
    with pytest.raises(TPGraphError, match="not a number"):
        read_metrics_csv(p)
    with pytest.raises(TPGraphError, match="no metrics file"):
        read_metrics_csv(tmp_path / "missing.csv")


def test_json_summary_is_standard_json(tmp_path):
    p = tmp_path / "summary.json"
    atomic_write_json(p, {"a": math.nan, "b": [math.inf, 1.5], "c": np.float32(2.0), "d": {"e": None}})
    text = p.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [None, 1.5], "c": 2.0, "d": {"e": None}}
    assert read_summary(tmp_path) == read_summary(p)
    p.write_text("{broken")
    with pytest.raises(TPGraphError, match="not valid JSON"):
        read_summary(p)


def test_weights_load_without_pickle(tmp_path):
    w = {"W_h": np.eye(3, dtype=np.float32), "b_h": np.zeros(3, dtype=np.float32)}
    p = tmp_path / "weights.npz"
    save_weights(p, w)
    with np.load(p, allow_pickle=False) as z:
        assert sorted(z.files) == ["W_h", "b_h"]
        np.testing.assert_array_equal(z["W_h"], w["W_h"])
    back = load_npz(p)
    assert back["W_h"].dtype == np.float32


def test_object_arrays_are_never_written(tmp_path):
    with pytest.raises(TypeError, match="pickle"):
        atomic_save_npz(tmp_path / "x.npz", {"x": np.array([{"a": 1}], dtype=object)})


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "missing"])
def test_damaged_weight_files_are_refused(tmp_path, damage):
    p = tmp_path / "weights.npz"
    save_weights(p, {"W_h": np.arange(400, dtype=np.float32).reshape(20, 20)})
    data = bytearray(p.read_bytes())
    if damage == "truncate":
        p.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "flip":
        i = len(data) // 2  # inside the array's bytes: the zip CRC catches it
        data[i] ^= 0xFF
        p.write_bytes(bytes(data))
    elif damage == "garbage":
        p.write_bytes(b"not a zip file at all")
    else:
        p.unlink()
    with pytest.raises(CheckpointError) as err:
        load_npz(p)
    assert "weights.npz" in str(err.value)
