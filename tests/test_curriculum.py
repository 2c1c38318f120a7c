"""Tests of the length curriculum (tpgraph.train.curriculum, protocol.curriculum_*)."""

import numpy as np
import pytest

from tpgraph.errors import ConfigError
from tpgraph.tasks import TASKS, make_task
from tpgraph.train import Callback, Config, Trainer, apply_overrides
from tpgraph.train.curriculum import curriculum_stages


def _config(*extra, runs_dir=None):
    sets = ["task.delay=4", "model.n_hidden=8", "protocol.n_batches=12", "protocol.warmup=2",
            "protocol.val_batches=2", "protocol.val_every=4", "output.checkpoint_every=0", "output.plots=false"]
    if runs_dir is not None:
        sets.append(f"output.runs_dir={runs_dir}")
    return apply_overrides(Config(), [*sets, *extra])


_OPTIONS = {"copy_memory": {"delay": 30}, "sequence_expansion": {"length": 30}, "adding": {"length": 30},
            "temporal_order": {"length": 30}}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_with_horizon_changes_only_the_horizon_option(name):
    task = make_task(name, **_OPTIONS[name])
    assert task.horizon == ("delay" if name == "copy_memory" else "length")
    shorter = task.with_horizon(10)
    assert type(shorter) is type(task) and shorter.horizon_value == 10 and task.horizon_value == 30
    assert {k: v for k, v in shorter.options().items() if k != task.horizon} == \
           {k: v for k, v in task.options().items() if k != task.horizon}
    assert shorter.length < task.length
    x, y = shorter.batch(np.random.default_rng(0), 3)
    assert x.shape[:2] == (shorter.length, 3)


def test_stages_split_the_batches_by_fraction_and_give_the_rest_to_the_task():
    task = make_task("sequence_expansion", length=40)
    stages = curriculum_stages(task, 40000, 20, 10, 0.25)
    assert [(s.first, s.last, s.value) for s in stages] == [(0, 10000, 20), (10000, 20000, 30), (20000, 40000, 40)]
    assert stages[-1].task is task
    # a step that does not land on the task's value: the last shorter stage is the largest value below it
    assert [s.value for s in curriculum_stages(task, 1000, 15, 10, 0.1)] == [15, 25, 35, 40]
    off = curriculum_stages(task, 500, 0, 10, 0.25)
    assert [(s.first, s.last) for s in off] == [(0, 500)] and off[0].task is task


@pytest.mark.parametrize("start, step, fraction, n, words", [
    (40, 10, 0.25, 1000, "must be below the task's own task.length (40)"),
    (10, 10, 0.4, 1000, "leave no batch for the task itself"),
    (20, 10, 0.0001, 1000, "leave no batch for a stage"),
    (1, 10, 0.1, 1000, "the stage at task.length = 1"),
])
def test_stages_refuse_what_cannot_run(start, step, fraction, n, words):
    with pytest.raises(ConfigError, match="curriculum") as info:
        curriculum_stages(make_task("sequence_expansion", length=40), n, start, step, fraction)
    assert words in str(info.value)


def test_config_validation_refuses_a_curriculum_at_the_tasks_own_delay():
    with pytest.raises(ConfigError, match=r"curriculum_start \(4\) must be below the task's own task.delay \(4\)"):
        _config("protocol.curriculum_start=4")


class _Shapes(Callback):
    def __init__(self, trainer):
        self.lengths = []
        step = trainer.model.train_step

        def spy(x, y, **kw):
            self.lengths.append(x.shape[0])
            return step(x, y, **kw)
        trainer.model.train_step = spy


def test_each_batch_comes_from_its_stage_and_validation_from_the_task():
    t = Trainer(_config("protocol.curriculum_start=2", "protocol.curriculum_step=1",
                        "protocol.curriculum_fraction=0.25"))
    spy = _Shapes(t)
    summary = t.run()
    # copy memory sequences have length delay + 2 n_memorise: delays 2, 3 for 3 batches each, then 4
    assert spy.lengths == [22] * 3 + [23] * 3 + [24] * 6
    assert t.val_inputs.shape[1] == 24  # [val_batches, length, batch_size]
    assert summary["curriculum"] == {"option": "delay", "stages": [
        {"value": 2, "batches": [1, 3]}, {"value": 3, "batches": [4, 6]}, {"value": 4, "batches": [7, 12]}]}


class _StopAt(Callback):
    def __init__(self, batch):
        self.batch = batch

    def on_batch(self, trainer, batch, loss):
        if batch == self.batch:
            trainer.request_stop("test")


def test_the_first_stage_trains_exactly_as_a_run_on_the_shorter_task():
    cur = Trainer(_config("protocol.curriculum_start=2", "protocol.curriculum_fraction=0.5"),
                  callbacks=[_StopAt(6)])
    cur.run()
    short = Trainer(_config("task.delay=2", "protocol.n_batches=6"))
    short.run()
    assert cur.state.batch == short.state.batch == 6
    for k in short.model.params:
        np.testing.assert_array_equal(cur.model.params[k], short.model.params[k], err_msg=k)
    # and the task's own stage then changes them: the curriculum is not the short run with a longer name
    cur2 = Trainer(_config("protocol.curriculum_start=2", "protocol.curriculum_fraction=0.5"))
    cur2.run()
    assert not np.array_equal(cur2.model.params["W_h"], short.model.params["W_h"])


def test_resume_mid_curriculum_matches_an_uninterrupted_run(tmp_path):
    sets = ["protocol.curriculum_start=2", "protocol.curriculum_step=1", "protocol.curriculum_fraction=0.25",
            "protocol.n_batches=24", "output.checkpoint_every=4"]
    full = Trainer(_config(*sets))
    sf = full.run()
    part = Trainer(_config(*sets, runs_dir=tmp_path), tmp_path / "run", callbacks=[_StopAt(8)])
    part.run()
    assert part.state.batch == 8
    resumed = Trainer.resume(tmp_path / "run")
    assert resumed.state.batch == 8  # mid-way through the stage at delay 3 (batches 7..12)
    spy = _Shapes(resumed)
    sr = resumed.run()
    assert spy.lengths == [23] * 4 + [24] * 12
    for k in full.model.params:
        np.testing.assert_array_equal(full.model.params[k], resumed.model.params[k], err_msg=k)
    assert sr["final"]["val_loss"] == sf["final"]["val_loss"]
