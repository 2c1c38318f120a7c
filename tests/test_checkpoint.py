"""Tests of tpgraph.train.checkpoint and Trainer.resume: safe, complete, all-or-nothing loading."""

import json

import numpy as np
import pytest

from tpgraph.errors import CheckpointError
from tpgraph.train import Callback, Config, Trainer, apply_overrides, read_metrics_csv
from tpgraph.train.checkpoint import VERSION, checkpoint_info, load_checkpoint, save_checkpoint
from tpgraph.train.records import load_npz

SHAPES = {"W": (3, 4), "b": (4,)}


def _save(folder, batch=7, **state):
    arrays = {"param/W": np.arange(12, dtype=np.float32).reshape(3, 4), "param/b": np.ones(4, np.float32)}
    state = {"x": 1.5, "big": 2**100, "rng": {"state": 12345678901234567890}, **state}
    return save_checkpoint(folder, arrays=arrays, state=state, shapes=SHAPES, batch=batch)


def test_round_trip_keeps_arrays_and_scalars_exactly(tmp_path):
    _save(tmp_path)
    doc, arrays = load_checkpoint(tmp_path, SHAPES)
    assert doc["batch"] == 7 and doc["version"] == VERSION
    assert doc["state"]["big"] == 2**100 and doc["state"]["rng"]["state"] == 12345678901234567890
    np.testing.assert_array_equal(arrays["param/W"], np.arange(12, dtype=np.float32).reshape(3, 4))
    assert arrays["param/W"].dtype == np.float32


def test_a_new_checkpoint_replaces_the_old_and_leaves_one_arrays_file(tmp_path):
    _save(tmp_path, batch=1)
    _save(tmp_path, batch=2)
    assert len(list(tmp_path.glob("state-*.npz"))) == 1
    assert checkpoint_info(tmp_path)["batch"] == 2
    assert not list(tmp_path.glob(".*.tmp"))


def test_an_arrays_file_without_its_index_update_is_ignored(tmp_path):
    """A kill between writing the new arrays and the new index leaves the old pair intact."""
    _save(tmp_path, batch=1)
    (tmp_path / "state-00000002-deadbeef.npz").write_bytes(b"half written")
    doc, arrays = load_checkpoint(tmp_path, SHAPES)
    assert doc["batch"] == 1


def _arrays_file(folder):
    return folder / checkpoint_info(folder)["arrays_file"]


@pytest.mark.parametrize("damage, words", [
    ("truncate_npz", ["truncated"]),
    ("flip_npz", ["corrupted"]),
    ("delete_npz", ["missing"]),
    ("truncate_json", ["corrupted or truncated"]),
    ("flip_json_value", ["checksum"]),
    ("no_index", ["no checkpoint"]),
    ("version", ["version 99"]),
    ("format", ["not a tpgraph checkpoint"]),
])
def test_damaged_checkpoints_are_refused(tmp_path, damage, words):
    _save(tmp_path)
    index = tmp_path / "checkpoint.json"
    npz = _arrays_file(tmp_path)
    if damage == "truncate_npz":
        npz.write_bytes(npz.read_bytes()[:-10])
    elif damage == "flip_npz":
        data = bytearray(npz.read_bytes())
        data[len(data) // 3] ^= 0x01
        npz.write_bytes(bytes(data))
    elif damage == "delete_npz":
        npz.unlink()
    elif damage == "truncate_json":
        index.write_text(index.read_text()[:40])
    elif damage == "flip_json_value":
        index.write_text(index.read_text().replace('"x": 1.5', '"x": 2.5'))
    elif damage == "no_index":
        index.unlink()
    elif damage in ("version", "format"):
        doc = json.loads(index.read_text())
        doc["version" if damage == "version" else "format"] = 99 if damage == "version" else "other"
        index.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path, SHAPES)
    for w in words:
        assert w in str(err.value), str(err.value)


def test_another_model_shape_is_refused(tmp_path):
    _save(tmp_path)
    with pytest.raises(CheckpointError, match=r"another model shape.*W: checkpoint \(3, 4\), model \(5, 4\)"):
        load_checkpoint(tmp_path, {"W": (5, 4), "b": (4,)})


# ---------------------------------------------------------------------- through the trainer
def _config(tmp_path, *extra):
    return apply_overrides(Config(), [
        "task.delay=2", "model.n_hidden=12", "protocol.n_batches=120", "protocol.warmup=20",
        "protocol.val_batches=3", "protocol.val_every=30", "output.checkpoint_every=40", "output.plots=false",
        f"output.runs_dir={tmp_path}", "output.name=run", *extra])


class StopAt(Callback):
    def __init__(self, batch):
        self.batch = batch

    def on_batch(self, trainer, batch, loss):
        if batch == self.batch:
            trainer.request_stop("test stop")


def test_resume_after_a_stop_matches_an_uninterrupted_run(tmp_path):
    full = Trainer(_config(tmp_path / "a"), tmp_path / "a" / "run")
    full.run()
    part = Trainer(_config(tmp_path / "b"), tmp_path / "b" / "run", callbacks=[StopAt(50)])
    assert part.run()["status"] == "aborted"
    resumed = Trainer.resume(tmp_path / "b" / "run")
    assert resumed.state.batch == 50
    summary = resumed.run()
    assert summary["status"] == "completed" and summary["sessions"] == 2
    for k, v in full.model.params.items():
        np.testing.assert_array_equal(resumed.model.params[k], v)
    a, b = read_metrics_csv(tmp_path / "a/run/metrics.csv"), read_metrics_csv(tmp_path / "b/run/metrics.csv")
    for c in a:
        if c != "elapsed_s":
            np.testing.assert_array_equal(a[c], b[c])


def test_a_run_killed_while_writing_its_records_completes_them(tmp_path):
    t = Trainer(_config(tmp_path), tmp_path / "run")
    t.run()
    root = tmp_path / "run"
    weights = load_npz(root / "weights.npz")
    # as if killed after the final checkpoint, before the records: old summary, no weights
    (root / "weights.npz").unlink()
    summary = json.loads((root / "summary.json").read_text())
    (root / "summary.json").write_text(json.dumps(dict(summary, status="running")))
    again = Trainer.resume(root)
    assert again.state.status == "completed"
    s = again.run()
    assert s["status"] == "completed" and s["batches_done"] == 120
    again_weights = load_npz(root / "weights.npz")
    assert all(again_weights[k].tobytes() == v.tobytes() for k, v in weights.items())
    with pytest.raises(CheckpointError, match="nothing to resume"):
        Trainer.resume(root)


def test_finished_run_cannot_be_resumed(tmp_path):
    Trainer(_config(tmp_path), tmp_path / "run").run()
    with pytest.raises(CheckpointError, match="nothing to resume"):
        Trainer.resume(tmp_path / "run")


def _stopped_run(tmp_path):
    t = Trainer(_config(tmp_path), tmp_path / "run", callbacks=[StopAt(45)])
    t.run()
    return tmp_path / "run" / "checkpoint"


def test_resume_refuses_corrupted_arrays_and_loads_nothing(tmp_path):
    folder = _stopped_run(tmp_path)
    npz = _arrays_file(folder)
    data = bytearray(npz.read_bytes())
    data[-200] ^= 0x40
    npz.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted"):
        Trainer.resume(tmp_path / "run")


def test_resume_refuses_a_checkpoint_of_another_shape(tmp_path):
    folder = _stopped_run(tmp_path)
    index = folder / "checkpoint.json"
    doc = json.loads(index.read_text())
    # a consistent checkpoint of a bigger model: rewrite it with other shapes and arrays
    _, arrays = load_checkpoint(folder)
    arrays["param/W_h"] = np.zeros((13, 13), np.float32)
    shapes = dict(doc["shapes"], W_h=(13, 13))
    save_checkpoint(folder, arrays=arrays, state=doc["state"], shapes=shapes, batch=doc["batch"])
    with pytest.raises(CheckpointError, match="another model shape"):
        Trainer.resume(tmp_path / "run")


def test_resume_refuses_a_state_with_missing_fields(tmp_path):
    folder = _stopped_run(tmp_path)
    doc, arrays = load_checkpoint(folder)
    state = doc["state"]
    del state["train"]["best_val_loss"]
    save_checkpoint(folder, arrays=arrays, state=state, shapes=doc["shapes"], batch=doc["batch"])
    with pytest.raises(CheckpointError, match="training state"):
        Trainer.resume(tmp_path / "run")


def test_resume_refuses_bad_optimizer_buffers(tmp_path):
    folder = _stopped_run(tmp_path)
    doc, arrays = load_checkpoint(folder)
    arrays["opt/W_h/m"] = arrays["opt/W_h/m"][:3]
    save_checkpoint(folder, arrays=arrays, state=doc["state"], shapes=doc["shapes"], batch=doc["batch"])
    with pytest.raises(CheckpointError, match="W_h/m"):
        Trainer.resume(tmp_path / "run")


def test_best_weights_are_the_best_validation_point(tmp_path):
    t = Trainer(_config(tmp_path), tmp_path / "run")
    s = t.run()
    best = load_npz(tmp_path / "run" / "weights_best.npz")
    assert sorted(best) == sorted(t.model.params)
    assert s["best"]["val_loss"] == min(r["val_loss"] for r in t.state.rows)
