"""Tests of tpgraph.tasks: copy memory, sequence expansion, accuracy helpers."""

import json
import math

import numpy as np
import pytest

from tpgraph.errors import ConfigError
from tpgraph.tasks import (
    TASKS,
    AddingTask,
    CopyMemoryTask,
    SequenceExpansionTask,
    Task,
    TemporalOrderTask,
    make_task,
    sequence_accuracy,
    step_accuracy,
    within_tolerance,
)

# ---------------------------------------------------------------- copy memory


@pytest.mark.parametrize("delay", [1, 5, 10, 25])
def test_copy_memory_lengths_and_vocabulary(delay):
    task = CopyMemoryTask(delay=delay)
    assert task.name == "copy_memory"
    assert task.length == delay + 20
    assert task.n_in == 10
    assert task.n_out == 10
    assert task.blank == 8
    assert task.marker == 9
    inputs, labels = task.batch(np.random.default_rng(0), 7)
    assert inputs.shape == (delay + 20, 7)
    assert labels.shape == (delay + 20, 7)
    assert inputs.dtype == np.int64 and labels.dtype == np.int64


def test_copy_memory_nondefault_lengths():
    task = CopyMemoryTask(delay=4, n_symbols=3, n_memorise=2)
    assert task.length == 8
    assert task.n_in == task.n_out == 5
    assert (task.blank, task.marker) == (3, 4)


@pytest.mark.parametrize("delay", [1, 5, 10])
def test_copy_memory_marker_position(delay):
    task = CopyMemoryTask(delay=delay)
    inputs, _ = task.batch(np.random.default_rng(1), 50)
    is_marker = inputs == 9
    # exactly once per sequence, at 0-based index T + 9 for M = 10
    assert np.all(is_marker.sum(axis=0) == 1)
    assert np.all(is_marker[delay + 9])
    assert task.marker_index == delay + 9


@pytest.mark.parametrize("delay,k,m", [(10, 8, 10), (3, 5, 4), (1, 2, 1)])
def test_copy_memory_structure(delay, k, m):
    task = CopyMemoryTask(delay=delay, n_symbols=k, n_memorise=m)
    inputs, labels = task.batch(np.random.default_rng(2), 64)
    length = delay + 2 * m
    blank, marker = k, k + 1
    symbols = inputs[:m]
    assert np.all((symbols >= 0) & (symbols < k))
    # rebuild the expected arrays independently
    exp_in = np.full((length, 64), blank)
    exp_in[:m] = symbols
    exp_in[delay + m - 1] = marker
    exp_lab = np.full((length, 64), blank)
    exp_lab[delay + m :] = symbols
    np.testing.assert_array_equal(inputs, exp_in)
    np.testing.assert_array_equal(labels, exp_lab)
    # labels never use the marker; last M labels are the first M inputs
    assert not np.any(labels == marker)
    np.testing.assert_array_equal(labels[-m:], inputs[:m])
    assert np.all(labels[: delay + m] == blank)


def test_copy_memory_symbols_cover_range():
    task = CopyMemoryTask(delay=2)
    inputs, _ = task.batch(np.random.default_rng(3), 200)
    assert set(np.unique(inputs[:10]).tolist()) == set(range(8))


def test_copy_memory_hand_written_example():
    task = CopyMemoryTask(delay=3, n_symbols=8, n_memorise=2)
    inputs, labels = task.example(np.random.default_rng(5))
    a, b = inputs[:2].tolist()
    np.testing.assert_array_equal(inputs, [a, b, 8, 8, 9, 8, 8])
    np.testing.assert_array_equal(labels, [8, 8, 8, 8, 8, a, b])
    assert task.render(inputs, labels) == f"in : {a}{b}--*--\nout: -----{a}{b}"


@pytest.mark.parametrize(
    "delay,expected",
    [(5, 0.8318), (10, 0.6931), (15, 0.5941), (20, 0.5199), (25, 0.4621)],
)
def test_copy_memory_baseline_matches_paper(delay, expected):
    task = CopyMemoryTask(delay=delay)
    assert round(task.baseline_loss, 4) == expected
    assert task.baseline_loss == pytest.approx(10 * math.log(8) / (delay + 20))


def test_copy_memory_baseline_general_formula():
    task = CopyMemoryTask(delay=7, n_symbols=5, n_memorise=3)
    assert task.baseline_loss == pytest.approx(3 * math.log(5) / 13)


# ------------------------------------------------------- sequence expansion


@pytest.mark.parametrize("length", [6, 7])
def test_sequence_expansion_example(length):
    task = SequenceExpansionTask(length=length)
    assert task.name == "sequence_expansion"
    assert task.n_in == task.n_out == 5
    assert task.blank == 4
    assert task.marker is None
    assert task.baseline_loss is None
    inputs, labels = task.example(np.random.default_rng(11))
    half = math.ceil(length / 2)
    first_half = inputs[:half]
    assert inputs.shape == labels.shape == (length,)
    assert np.all((first_half >= 0) & (first_half < 4))
    assert np.all(inputs[half:] == 4)
    np.testing.assert_array_equal(labels, np.repeat(first_half, 2)[:length])
    assert not np.any(labels == 4)


def test_sequence_expansion_hand_written_t7():
    task = SequenceExpansionTask(length=7, n_symbols=4)
    inputs, labels = task.example(np.random.default_rng(4))
    a, b, c, d = inputs[:4].tolist()
    np.testing.assert_array_equal(inputs, [a, b, c, d, 4, 4, 4])
    np.testing.assert_array_equal(labels, [a, a, b, b, c, c, d])
    assert task.render(inputs, labels) == f"in : {a}{b}{c}{d}---\nout: {a}{a}{b}{b}{c}{c}{d}"


def test_sequence_expansion_batch_structure():
    task = SequenceExpansionTask(length=9, n_symbols=3)
    inputs, labels = task.batch(np.random.default_rng(6), 40)
    assert inputs.shape == labels.shape == (9, 40)
    assert inputs.dtype == labels.dtype == np.int64
    np.testing.assert_array_equal(labels, np.repeat(inputs[:5], 2, axis=0)[:9])
    assert np.all(inputs[5:] == 3)
    assert labels.max() < 3


# ------------------------------------------------------ shared behaviour


TASK_FACTORIES = [
    lambda: CopyMemoryTask(delay=5),
    lambda: SequenceExpansionTask(length=10),
    lambda: AddingTask(length=30),
    lambda: TemporalOrderTask(length=30),
    lambda: TemporalOrderTask(length=40, bits=3),
]


@pytest.mark.parametrize("factory", TASK_FACTORIES)
def test_determinism(factory):
    task = factory()
    a = task.batch(np.random.default_rng(42), 16)
    b = task.batch(np.random.default_rng(42), 16)
    c = task.batch(np.random.default_rng(43), 16)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("factory", TASK_FACTORIES)
def test_validation_set_reproducible(factory):
    task = factory()
    x1, y1 = task.validation_set(seed=3, n_batches=4, batch_size=8)
    x2, y2 = task.validation_set(seed=3, n_batches=4, batch_size=8)
    x3, _ = task.validation_set(seed=4, n_batches=4, batch_size=8)
    real, regression = task.input_kind == "real", task.output_kind == "regression"
    assert x1.shape == (4, task.length, 8) + ((task.n_in,) if real else ())
    assert y1.shape == (4, task.label_length, 8) + ((task.n_out,) if regression else ())
    assert x1.dtype == (np.float64 if real else np.int64)
    assert y1.dtype == (np.float64 if regression else np.int64)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(x1, x3)
    # batches differ from each other and come from default_rng(seed)
    assert not np.array_equal(x1[0], x1[1])
    rng = np.random.default_rng(3)
    first = task.batch(rng, 8)
    np.testing.assert_array_equal(x1[0], first[0])


@pytest.mark.parametrize("factory", TASK_FACTORIES)
def test_options_roundtrip(factory):
    task = factory()
    opts = task.options()
    assert json.loads(json.dumps(opts)) == opts
    rebuilt = make_task(task.name, **opts)
    assert type(rebuilt) is type(task)
    assert rebuilt.options() == opts
    assert rebuilt == task
    np.testing.assert_array_equal(
        rebuilt.batch(np.random.default_rng(0), 3)[0], task.batch(np.random.default_rng(0), 3)[0]
    )


def test_registry():
    assert TASKS == {"copy_memory": CopyMemoryTask, "sequence_expansion": SequenceExpansionTask,
                     "adding": AddingTask, "temporal_order": TemporalOrderTask}
    assert all(issubclass(cls, Task) for cls in TASKS.values())
    task = make_task("copy_memory", delay=4, n_symbols=3)
    assert task.options() == {"delay": 4, "n_symbols": 3, "n_memorise": 10}


def test_numpy_integer_options_accepted():
    task = CopyMemoryTask(delay=np.int64(5))
    assert task.options() == {"delay": 5, "n_symbols": 8, "n_memorise": 10}
    assert type(task.options()["delay"]) is int
    inputs, _ = task.batch(np.random.default_rng(0), np.int32(2))
    assert inputs.shape == (25, 2)


def test_render_symbols_above_nine_are_separated():
    task = CopyMemoryTask(delay=1, n_symbols=12, n_memorise=1)
    text = task.render(np.array([11, 13, 12]), np.array([12, 12, 11]))
    assert text == "in : 11 * -\nout: - - 11"


# ------------------------------------------------------ accuracy helpers


def test_step_accuracy():
    pred = np.array([[0, 1, 2], [3, 4, 5]])
    labels = np.array([[0, 1, 0], [3, 0, 5]])
    assert step_accuracy(pred, labels) == pytest.approx(4 / 6)
    assert step_accuracy(labels, labels) == 1.0


def test_sequence_accuracy():
    # time-major: columns are sequences; only column 0 is all right
    pred = np.array([[0, 1, 2, 7], [3, 4, 5, 7]])
    labels = np.array([[0, 1, 0, 7], [3, 0, 5, 6]])
    assert sequence_accuracy(pred, labels) == pytest.approx(1 / 4)
    assert sequence_accuracy(labels, labels) == 1.0
    # a wrong blank makes the whole sequence wrong
    lab = np.array([[8], [8], [3]])
    assert sequence_accuracy(np.array([[8], [2], [3]]), lab) == 0.0
    assert step_accuracy(np.array([[8], [2], [3]]), lab) == pytest.approx(2 / 3)


@pytest.mark.parametrize("fn", [step_accuracy, sequence_accuracy])
def test_accuracy_shape_mismatch(fn):
    with pytest.raises(ConfigError, match=r"pred.*labels.*\(2, 3\).*\(3, 2\)"):
        fn(np.zeros((2, 3), dtype=int), np.zeros((3, 2), dtype=int))


# ------------------------------------------------------ errors


@pytest.mark.parametrize(
    "kwargs,culprit,allowed",
    [
        ({"delay": 0}, "delay", ">= 1"),
        ({"delay": -3}, "delay", ">= 1"),
        ({"delay": 2.0}, "delay", ">= 1"),
        ({"delay": True}, "delay", ">= 1"),
        ({"delay": "10"}, "delay", ">= 1"),
        ({"delay": 5, "n_symbols": 0}, "n_symbols", ">= 1"),
        ({"delay": 5, "n_symbols": False}, "n_symbols", ">= 1"),
        ({"delay": 5, "n_memorise": 0}, "n_memorise", ">= 1"),
        ({"delay": 5, "n_memorise": 2.5}, "n_memorise", ">= 1"),
    ],
)
def test_copy_memory_config_errors(kwargs, culprit, allowed):
    with pytest.raises(ConfigError) as err:
        CopyMemoryTask(**kwargs)
    msg = str(err.value)
    assert repr(culprit) in msg
    assert repr(kwargs[culprit]) in msg
    assert allowed in msg


@pytest.mark.parametrize(
    "kwargs,culprit,allowed",
    [
        ({"length": 1}, "length", ">= 2"),
        ({"length": 0}, "length", ">= 2"),
        ({"length": True}, "length", ">= 2"),
        ({"length": 6.0}, "length", ">= 2"),
        ({"length": 6, "n_symbols": 0}, "n_symbols", ">= 1"),
    ],
)
def test_sequence_expansion_config_errors(kwargs, culprit, allowed):
    with pytest.raises(ConfigError) as err:
        SequenceExpansionTask(**kwargs)
    msg = str(err.value)
    assert repr(culprit) in msg
    assert repr(kwargs[culprit]) in msg
    assert allowed in msg


@pytest.mark.parametrize("factory", TASK_FACTORIES)
@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_batch_size_errors(factory, bad):
    task = factory()
    with pytest.raises(ConfigError, match=r"'batch_size'.*>= 1") as err:
        task.batch(np.random.default_rng(0), bad)
    assert repr(bad) in str(err.value)


@pytest.mark.parametrize(
    "kwargs,culprit,allowed",
    [
        ({"seed": -1, "n_batches": 1, "batch_size": 1}, "seed", ">= 0"),
        ({"seed": 0, "n_batches": 0, "batch_size": 1}, "n_batches", ">= 1"),
        ({"seed": 0, "n_batches": 1, "batch_size": 0}, "batch_size", ">= 1"),
        ({"seed": 1.5, "n_batches": 1, "batch_size": 1}, "seed", ">= 0"),
    ],
)
def test_validation_set_errors(kwargs, culprit, allowed):
    with pytest.raises(ConfigError) as err:
        CopyMemoryTask(delay=2).validation_set(**kwargs)
    msg = str(err.value)
    assert repr(culprit) in msg and repr(kwargs[culprit]) in msg and allowed in msg


def test_batch_rejects_non_generator():
    with pytest.raises(ConfigError, match="'rng'.*Generator"):
        CopyMemoryTask(delay=2).batch(np.random.RandomState(0), 2)


def test_make_task_unknown_name():
    with pytest.raises(ConfigError) as err:
        make_task("adding_problem", delay=5)
    msg = str(err.value)
    assert "'adding_problem'" in msg
    assert "copy_memory" in msg and "sequence_expansion" in msg


def test_make_task_unknown_option():
    with pytest.raises(ConfigError) as err:
        make_task("copy_memory", delay=5, n_symbol=8)
    msg = str(err.value)
    assert "'n_symbol'" in msg
    for name in ("delay", "n_symbols", "n_memorise"):
        assert name in msg
    with pytest.raises(ConfigError) as err:
        make_task("sequence_expansion", length=5, delay=3)
    msg = str(err.value)
    assert "'delay'" in msg and "length" in msg and "n_symbols" in msg


def test_make_task_missing_required_option():
    with pytest.raises(ConfigError, match=r"'delay'.*accepted options are: delay"):
        make_task("copy_memory")


def test_make_task_propagates_value_errors():
    with pytest.raises(ConfigError, match="'delay'.*>= 1.*got 0"):
        make_task("copy_memory", delay=0)


def test_render_rejects_bad_input():
    task = SequenceExpansionTask(length=4)
    with pytest.raises(ConfigError, match=r"'inputs'.*\(4,\)"):
        task.render(np.zeros(3, dtype=int), np.zeros(4, dtype=int))
    with pytest.raises(ConfigError, match=r"'labels'.*0\.\.4"):
        task.render(np.zeros(4, dtype=int), np.full(4, 5))


# ------------------------------------------------------ the long-range tasks
# Each is checked against a plain-NumPy reading of its definition (module
# docstrings of tpgraph.tasks.adding and tpgraph.tasks.temporal_order).


def _marked_steps(markers):
    """[L, B] 0/1 -> the 0-based steps of the ones, one row per sequence."""
    return [np.flatnonzero(markers[:, b]) for b in range(markers.shape[1])]


@pytest.mark.parametrize("length", [10, 50, 100])
def test_adding_definition(length):
    task = AddingTask(length=length)
    assert (task.name, task.n_in, task.n_out, task.label_length) == ("adding", 2, 1, 1)
    assert (task.input_kind, task.output_kind, task.many_to_one) == ("real", "regression", True)
    x, y = task.batch(np.random.default_rng(7), 400)
    assert x.shape == (length, 400, 2) and y.shape == (1, 400, 1)
    values, markers = x[:, :, 0], x[:, :, 1]
    assert np.all((values >= 0) & (values < 1))
    assert set(np.unique(markers).tolist()) <= {0.0, 1.0}
    first_end, second_end = length // 10, length // 2  # [0, T/10) and [T/10, T/2)
    p1s, p2s = [], []
    for b, steps in enumerate(_marked_steps(markers)):
        assert len(steps) == 2
        p1, p2 = steps
        assert 0 <= p1 < first_end <= p2 < second_end
        assert y[0, b, 0] == pytest.approx((values[p1, b] + values[p2, b]) / 2, abs=1e-15)
        p1s.append(p1)
        p2s.append(p2)
    # every allowed step is used (400 draws over at most 40 steps)
    assert set(p1s) == set(range(0, first_end))
    if length <= 50:
        assert set(p2s) == set(range(first_end, second_end))


def test_adding_hand_written_positions():
    task = AddingTask(length=20, positions=[[0.25, 0.3], [0.9, 0.95]])  # steps [5, 6) and [18, 19)
    x, y = task.example(np.random.default_rng(3))
    assert x.shape == (20, 2) and y.shape == (1, 1)
    np.testing.assert_array_equal(np.flatnonzero(x[:, 1]), [5, 18])
    assert y[0, 0] == pytest.approx((x[5, 0] + x[18, 0]) / 2)
    assert task.marker_steps == [(5, 6), (18, 19)]
    text = task.render(x, y)
    assert text.count("[") == 2 and f"[{x[5, 0]:.2f}]" in text and text.endswith(f"out: {y[0, 0]:.4f}")


def test_adding_baseline_is_the_mse_of_predicting_one_half():
    task = AddingTask(length=40)
    assert task.baseline_loss == pytest.approx(1 / 24)
    _, y = task.batch(np.random.default_rng(0), 200_000)
    assert np.mean((y - 0.5) ** 2) == pytest.approx(1 / 24, rel=0.01)
    assert np.mean(y) == pytest.approx(0.5, abs=0.002)  # 0.5 is the best constant


def test_adding_options_and_thresholds():
    task = AddingTask(length=30, tolerance=0.1, success_acc=0.9)
    assert task.tolerance == 0.1 and task.success_accuracy == 0.9
    assert task.options() == {"length": 30, "positions": [[0.0, 0.1], [0.1, 0.5]], "tolerance": 0.1,
                              "success_acc": 0.9}
    assert make_task("adding", **task.options()) == task
    assert hash(make_task("adding", **task.options())) == hash(task)


@pytest.mark.parametrize("bits,length", [(2, 10), (2, 100), (3, 10), (3, 100)])
def test_temporal_order_definition(bits, length):
    task = TemporalOrderTask(length=length, bits=bits)
    assert (task.n_in, task.n_out, task.label_length) == (6, 2 ** bits, 1)
    x, y = task.batch(np.random.default_rng(bits * length), 500)
    assert x.shape == (length, 500) and y.shape == (1, 500)
    fractions = {2: [(0.1, 0.2), (0.4, 0.5)], 3: [(0.1, 0.2), (0.3, 0.4), (0.6, 0.7)]}[bits]
    ranges = [(int(a * length), int(b * length)) for a, b in fractions]
    assert task.symbol_steps == ranges
    assert np.all((x >= 0) & (x < 6))
    for b in range(500):
        steps = np.flatnonzero(x[:, b] < 2)  # X = 0, Y = 1; distractors 2..5
        assert len(steps) == bits
        assert all(lo <= p < hi for p, (lo, hi) in zip(steps, ranges))
        # the class: the relevant symbols read as a binary number, the first the most significant
        assert y[0, b] == int("".join(str(v) for v in x[steps, b]), 2)
    assert set(np.unique(y).tolist()) == set(range(2 ** bits))
    assert set(np.unique(np.where(x >= 2, x, 2)).tolist()) == {2, 3, 4, 5}


def test_temporal_order_baseline_and_render():
    assert TemporalOrderTask(length=20).baseline_loss == pytest.approx(math.log(4))
    assert TemporalOrderTask(length=20, bits=3).baseline_loss == pytest.approx(math.log(8))
    task = TemporalOrderTask(length=10)
    x = np.array([2, 1, 3, 4, 0, 5, 2, 3, 4, 5])
    assert task.render(x, np.array([2])) == "in : aYbcXdabcd\nout: YX (class 2)"
    # classes are balanced: chance cross-entropy is ln 4
    _, y = task.batch(np.random.default_rng(0), 40_000)
    assert np.bincount(y[0], minlength=4) / 40_000 == pytest.approx([0.25] * 4, abs=0.01)


def test_positions_are_robust_to_round_off():
    # 0.57 * 100 is 56.99999999999999 in floating point; the range still starts at step 57
    task = TemporalOrderTask(length=100, bits=1, positions=[[0.57, 0.58]])
    assert task.symbol_steps == [(57, 58)]
    x, _ = task.batch(np.random.default_rng(0), 20)
    assert np.all(x[57] < 2)


def test_temporal_order_custom_positions_and_bits():
    task = TemporalOrderTask(length=20, bits=1, positions=[[0.5, 0.55]])  # step 10 only
    x, y = task.batch(np.random.default_rng(1), 50)
    assert np.all(x[10] < 2) and np.all(np.delete(x, 10, axis=0) >= 2)
    np.testing.assert_array_equal(y[0], x[10])
    assert task.n_out == 2 and task.baseline_loss == pytest.approx(math.log(2))


@pytest.mark.parametrize(
    "cls,kwargs,culprit,words",
    [
        (AddingTask, {"length": 1}, "length", ">= 2"),
        (AddingTask, {"length": 5}, "positions", "holds no time step at length 5"),
        (AddingTask, {"length": 20, "positions": [[0.1, 0.2]]}, "positions", "2 [start, end] pairs"),
        (AddingTask, {"length": 20, "positions": [[0.2, 0.1], [0.3, 0.5]]}, "positions", "start < end"),
        (AddingTask, {"length": 20, "positions": [[0.0, 0.5], [0.4, 0.9]]}, "positions", "overlaps"),
        (AddingTask, {"length": 20, "positions": "0.1"}, "positions", "pairs"),
        (AddingTask, {"length": 20, "tolerance": 0}, "tolerance", "> 0"),
        (AddingTask, {"length": 20, "tolerance": True}, "tolerance", "> 0"),
        (AddingTask, {"length": 20, "success_acc": 1.5}, "success_acc", "<= 1"),
        (TemporalOrderTask, {"length": 20, "bits": 0}, "bits", ">= 1"),
        (TemporalOrderTask, {"length": 20, "bits": 4}, "bits", "no default 'positions'"),
        (TemporalOrderTask, {"length": 20, "bits": 3, "positions": [[0.1, 0.2], [0.4, 0.5]]}, "positions",
         "3 [start, end] pairs"),
        (TemporalOrderTask, {"length": 5}, "positions", "holds no time step at length 5"),
    ],
)
def test_long_range_task_errors(cls, kwargs, culprit, words):
    with pytest.raises(ConfigError) as err:
        cls(**kwargs)
    msg = str(err.value)
    assert repr(culprit) in msg and words in msg and cls.name in msg


def test_within_tolerance():
    pred = np.array([[[0.50, 1.0], [0.30, 1.0], [0.0, 0.0]]])
    target = np.array([[[0.52, 1.0], [0.40, 1.0], [0.0, 0.05]]])
    np.testing.assert_array_equal(within_tolerance(pred, target, 0.04), [[True, False, False]])
    with pytest.raises(ConfigError, match="3-D"):
        within_tolerance(pred[0], target[0], 0.04)
