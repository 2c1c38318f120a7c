"""Tests for tpgraph.optim and tpgraph.kernels.optim_kernels."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tpgraph.errors import CheckpointError, ConfigError
from tpgraph.kernels.optim_kernels import adam_kernel, momentum_kernel, sgd_kernel
from tpgraph.optim import OPTIMIZERS, SGD, Adam, Momentum, Optimizer, make_optimizer

DTYPES = [np.float32, np.float64]
SHAPES = [(11,), (4, 6)]
RULES = ["sgd", "momentum", "nesterov", "adam"]
N_STEPS = 5


# --------------------------------------------------------------------------
# Plain-NumPy references, written independently of the kernels.
# Scalars are cast to the parameter dtype, so a float32 reference runs in
# float32 arithmetic like the optimiser does.
# --------------------------------------------------------------------------
class RefSGD:
    def __init__(self, lr):
        self.lr = lr

    def step(self, p, g):
        lr = p.dtype.type(self.lr)
        return p - lr * g


class RefMomentum:
    def __init__(self, lr, mu, nesterov):
        self.lr, self.mu, self.nesterov = lr, mu, nesterov
        self.v = None

    def step(self, p, g):
        lr, mu = p.dtype.type(self.lr), p.dtype.type(self.mu)
        if self.v is None:
            self.v = np.zeros_like(p)
        self.v = mu * self.v + g
        if self.nesterov:
            return p - lr * (g + mu * self.v)
        return p - lr * self.v


class RefAdam:
    def __init__(self, lr, b1, b2, eps):
        self.lr, self.b1, self.b2, self.eps = lr, b1, b2, eps
        self.m = self.v = None
        self.t = 0

    def step(self, p, g):
        f = p.dtype.type
        lr, b1, b2, eps = f(self.lr), f(self.b1), f(self.b2), f(self.eps)
        if self.m is None:
            self.m, self.v = np.zeros_like(p), np.zeros_like(p)
        self.t += 1
        self.m = b1 * self.m + (1 - b1) * g
        self.v = b2 * self.v + (1 - b2) * (g * g)
        mhat = self.m / f(1.0 - self.b1**self.t)
        vhat = self.v / f(1.0 - self.b2**self.t)
        return p - lr * mhat / (np.sqrt(vhat) + eps)


SETTINGS = {
    "sgd": dict(lr=0.1),
    "momentum": dict(lr=0.1, momentum=0.8),
    "nesterov": dict(lr=0.1, momentum=0.8),
    "adam": dict(lr=0.05, beta1=0.8, beta2=0.95, eps=1e-6),
}


def make_ref(rule):
    s = SETTINGS[rule]
    if rule == "sgd":
        return RefSGD(s["lr"])
    if rule in ("momentum", "nesterov"):
        return RefMomentum(s["lr"], s["momentum"], rule == "nesterov")
    return RefAdam(s["lr"], s["beta1"], s["beta2"], s["eps"])


def make_opt(rule):
    s = dict(SETTINGS[rule])
    return make_optimizer(rule, s.pop("lr"), **s)


def tol(dtype):
    return dict(rtol=2e-6, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)


def grads(shape, dtype, n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(dtype) for _ in range(n)]


# --------------------------------------------------------------------------
# Agreement with the references
# --------------------------------------------------------------------------
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_optimizer_matches_numpy_reference(rule, dtype, shape):
    rng = np.random.default_rng(1)
    p0 = rng.standard_normal(shape).astype(dtype)
    param = p0.copy()
    ref_param = p0.copy()
    opt, ref = make_opt(rule), make_ref(rule)
    for g in grads(shape, dtype, N_STEPS):
        buf = param
        opt.step(param, g)
        assert param is buf  # in place
        ref_param = ref.step(ref_param, g)
        assert param.dtype == dtype and param.shape == shape
        np.testing.assert_allclose(param, ref_param, **tol(dtype))
    # the steps are large enough that a wrong rule cannot hide in the tolerance
    assert np.abs(param - p0).max() > 1e-2
    assert opt.t == N_STEPS
    state = opt.state_dict()
    if rule in ("momentum", "nesterov"):
        np.testing.assert_allclose(state["velocity"], ref.v, **tol(dtype))
    if rule == "adam":
        np.testing.assert_allclose(state["m"], ref.m, **tol(dtype))
        np.testing.assert_allclose(state["v"], ref.v, **tol(dtype))
        assert state["m"].dtype == dtype and state["m"].shape == shape


@pytest.mark.parametrize("dtype", DTYPES)
def test_kernels_directly_on_flat_arrays(dtype):
    f = np.dtype(dtype).type
    n = 9
    rng = np.random.default_rng(2)
    gs = grads((n,), dtype, N_STEPS, seed=3)
    p0 = rng.standard_normal(n).astype(dtype)

    # sgd
    p, rp, r = p0.copy(), p0.copy(), RefSGD(0.3)
    for g in gs:
        sgd_kernel(p, g, f(0.3))
        rp = r.step(rp, g)
    np.testing.assert_allclose(p, rp, **tol(dtype))

    # momentum, both variants
    for nesterov in (False, True):
        p, rp, v, r = p0.copy(), p0.copy(), np.zeros(n, dtype), RefMomentum(0.3, 0.7, nesterov)
        for g in gs:
            momentum_kernel(p, g, v, f(0.3), f(0.7), nesterov)
            rp = r.step(rp, g)
        np.testing.assert_allclose(p, rp, **tol(dtype))
        np.testing.assert_allclose(v, r.v, **tol(dtype))

    # adam
    p, rp, m, v, r = p0.copy(), p0.copy(), np.zeros(n, dtype), np.zeros(n, dtype), RefAdam(0.1, 0.9, 0.99, 1e-7)
    for t, g in enumerate(gs, start=1):
        adam_kernel(
            p, g, m, v, f(0.1), f(0.9), f(0.99), f(1) - f(0.9), f(1) - f(0.99), f(1e-7),
            f(1 - 0.9**t), f(1 - 0.99**t),
        )
        rp = r.step(rp, g)
    np.testing.assert_allclose(p, rp, **tol(dtype))
    np.testing.assert_allclose(m, r.m, **tol(dtype))
    np.testing.assert_allclose(v, r.v, **tol(dtype))


def test_kernel_rejects_length_mismatch():
    with pytest.raises(ValueError):
        sgd_kernel(np.zeros(3), np.zeros(4), 0.1)


# --------------------------------------------------------------------------
# Known properties
# --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_first_step_is_lr_times_sign(dtype):
    rng = np.random.default_rng(4)
    shape = (5, 7)
    g = (rng.uniform(0.01, 10.0, shape) * rng.choice([-1.0, 1.0], shape)).astype(dtype)
    p0 = rng.standard_normal(shape).astype(dtype)
    lr = 1e-2
    for scale in (1.0, 1000.0):  # Adam's first step ignores the gradient's scale
        p = p0.copy()
        Adam(lr).step(p, (g * scale).astype(dtype))
        np.testing.assert_allclose(p - p0, -lr * np.sign(g), rtol=1e-4, atol=1e-6)


def test_nesterov_differs_from_classical():
    gs = grads((6,), np.float64, 3, seed=5)
    lr, mu = 0.1, 0.9
    pc, pn = np.zeros(6), np.zeros(6)
    classical, nesterov = Momentum(lr, mu), Momentum(lr, mu, nesterov=True)
    classical.step(pc, gs[0])
    nesterov.step(pn, gs[0])
    # first step from v=0: classical moves by lr*g, Nesterov by lr*(1+mu)*g
    np.testing.assert_allclose(pc, -lr * gs[0], rtol=1e-14)
    np.testing.assert_allclose(pn, -lr * (1 + mu) * gs[0], rtol=1e-14)
    for g in gs[1:]:
        classical.step(pc, g)
        nesterov.step(pn, g)
    assert np.abs(pc - pn).min() > 1e-3


def test_momentum_zero_equals_sgd():
    gs = grads((3, 3), np.float64, 4, seed=6)
    p1, p2 = np.ones((3, 3)), np.ones((3, 3))
    a, b = SGD(0.2), Momentum(0.2, momentum=0.0)
    for g in gs:
        a.step(p1, g)
        b.step(p2, g)
    np.testing.assert_array_equal(p1, p2)


# --------------------------------------------------------------------------
# State: lazily allocated, bound shape/dtype, round trip
# --------------------------------------------------------------------------
def test_state_allocated_lazily_and_bound():
    opt = Adam(0.1)
    assert opt.state_dict() == {"t": 0}
    assert opt.shape is None
    p = np.zeros((2, 3), np.float32)
    opt.step(p, np.ones((2, 3), np.float32))
    sd = opt.state_dict()
    assert set(sd) == {"t", "m", "v"}
    assert sd["m"].shape == (2, 3) and sd["m"].dtype == np.float32
    with pytest.raises(ConfigError, match=r"shape \(3, 2\)"):
        opt.step(np.zeros((3, 2), np.float32), np.zeros((3, 2), np.float32))
    with pytest.raises(ConfigError, match="float64"):
        opt.step(np.zeros((2, 3)), np.zeros((2, 3)))
    assert opt.t == 1  # failed calls change nothing


@pytest.mark.parametrize("rule", RULES)
def test_sgd_and_all_rules_bind_shape(rule):
    opt = make_opt(rule)
    opt.step(np.zeros(4), np.ones(4))
    with pytest.raises(ConfigError, match="shape"):
        opt.step(np.zeros(5), np.ones(5))


def test_step_rejects_bad_arguments():
    opt = SGD(0.1)
    with pytest.raises(ConfigError, match="grad shape"):
        opt.step(np.zeros(3), np.zeros(4))
    with pytest.raises(ConfigError, match="grad dtype"):
        opt.step(np.zeros(3), np.zeros(3, np.float32))
    with pytest.raises(ConfigError, match="float16"):
        opt.step(np.zeros(3, np.float16), np.zeros(3, np.float16))
    with pytest.raises(ConfigError, match="contiguous"):
        opt.step(np.zeros((4, 4))[:, ::2], np.zeros((4, 2)))
    ro = np.zeros(3)
    ro.flags.writeable = False
    with pytest.raises(ConfigError, match="writeable"):
        opt.step(ro, np.zeros(3))
    assert opt.t == 0 and opt.shape is None


def test_non_contiguous_grad_is_accepted():
    p, opt = np.zeros((2, 3)), SGD(1.0)
    g = np.arange(6.0).reshape(3, 2).T  # Fortran-ordered view
    opt.step(p, g)
    np.testing.assert_array_equal(p, -g)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_state_dict_round_trip_is_bit_identical(rule, dtype):
    shape = (3, 4)
    gs = grads(shape, dtype, 6, seed=7)
    p0 = np.random.default_rng(8).standard_normal(shape).astype(dtype)

    straight, opt = p0.copy(), make_opt(rule)
    for g in gs:
        opt.step(straight, g)

    resumed, first = p0.copy(), make_opt(rule)
    for g in gs[:3]:
        first.step(resumed, g)
    sd = first.state_dict()
    for g in gs[3:]:  # keep using the old optimiser: the snapshot must not change
        first.step(resumed.copy(), g)
    for key, value in sd.items():
        assert isinstance(value, (np.ndarray, int, float)), key
    assert sd["t"] == 3
    second = make_optimizer(**first.hyperparameters())
    second.load_state_dict(sd)
    assert second.t == 3
    for g in gs[3:]:
        second.step(resumed, g)
    np.testing.assert_array_equal(resumed, straight)
    assert resumed.dtype == dtype
    final_a, final_b = opt.state_dict(), second.state_dict()
    assert final_a.keys() == final_b.keys()
    for key in final_a:
        np.testing.assert_array_equal(final_a[key], final_b[key])


def test_loaded_state_is_copied():
    opt = Momentum(0.1)
    opt.step(np.zeros(3), np.ones(3))
    sd = opt.state_dict()
    other = Momentum(0.1)
    other.load_state_dict(sd)
    sd["velocity"][:] = 99.0
    assert not np.any(other.state_dict()["velocity"] == 99.0)


def _adam_state():
    opt = Adam(0.1)
    opt.step(np.zeros((2, 3)), np.ones((2, 3)))
    return opt.state_dict()


def test_load_state_dict_rejects_wrong_shape_naming_key():
    sd = _adam_state()
    sd["v"] = np.zeros((3, 2))
    with pytest.raises(CheckpointError, match=r"'v'.*shape \(3, 2\)"):
        Adam(0.1).load_state_dict(sd)


def test_load_state_dict_rejects_shape_of_other_param():
    opt = Adam(0.1)
    opt.step(np.zeros(5), np.ones(5))
    with pytest.raises(CheckpointError, match="'m'"):
        opt.load_state_dict(_adam_state())
    assert opt.t == 1 and opt.shape == (5,)  # unchanged


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda d: d.update(bogus=np.zeros(1)), "bogus"),
        (lambda d: d.pop("v"), "v"),
        (lambda d: d.pop("t"), "t"),
        (lambda d: d.update(t=-1), "t"),
        (lambda d: d.update(t=1.5), "t"),
        (lambda d: d.update(m=d["m"].astype(np.float32)), "m"),
        (lambda d: d.update(m=d["m"].astype(np.int64)), "m"),
        (lambda d: d.update(m=d["m"].tolist()), "m"),
    ],
)
def test_load_state_dict_rejects_bad_entries_naming_key(mutate, key):
    sd = _adam_state()
    mutate(sd)
    with pytest.raises(CheckpointError, match=f"'{key}'"):
        Adam(0.1).load_state_dict(sd)


def test_momentum_rejects_adam_state():
    with pytest.raises(CheckpointError, match="'m'"):
        Momentum(0.1).load_state_dict(_adam_state())


def test_load_fresh_state_and_reset():
    opt = Adam(0.1)
    opt.load_state_dict({"t": 0})
    assert opt.t == 0 and opt.shape is None
    opt.step(np.zeros(2), np.ones(2))
    opt.reset()
    assert opt.state_dict() == {"t": 0} and opt.shape is None
    opt.step(np.zeros(3), np.ones(3))  # may serve a new shape after reset
    assert opt.shape == (3,)


# --------------------------------------------------------------------------
# Factory, hyperparameters, repr
# --------------------------------------------------------------------------
def test_optimizers_names():
    assert OPTIMIZERS == ("sgd", "momentum", "nesterov", "adam")
    for name in OPTIMIZERS:
        opt = make_optimizer(name, 0.01)
        assert isinstance(opt, Optimizer)
        assert opt.hyperparameters()["name"] == name
    assert isinstance(make_optimizer("sgd", 0.1), SGD)
    assert isinstance(make_optimizer("adam", 0.1), Adam)
    assert make_optimizer("nesterov", 0.1).nesterov is True
    assert make_optimizer("momentum", 0.1).nesterov is False
    assert make_optimizer("momentum", 0.1, nesterov=True).name == "nesterov"


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_hyperparameters_json_round_trip(name):
    opt = make_opt(name)
    h = opt.hyperparameters()
    h2 = json.loads(json.dumps(h))
    assert h2 == h
    rebuilt = make_optimizer(**h2)
    assert type(rebuilt) is type(opt) and rebuilt.hyperparameters() == h
    for key, value in SETTINGS[name].items():
        assert h[key] == value


def test_repr_is_readable():
    opt = Adam(0.001)
    r = repr(opt)
    assert r.startswith("Adam(") and "lr=0.001" in r and "beta2=0.999" in r and "t=0" in r
    opt.step(np.zeros((2, 2), np.float32), np.ones((2, 2), np.float32))
    assert "t=1" in repr(opt) and "(2, 2)" in repr(opt) and "float32" in repr(opt)
    assert repr(Momentum(0.1, 0.5)).startswith("Momentum(lr=0.1, momentum=0.5")


@pytest.mark.parametrize(
    "args, options, culprit, value",
    [
        (("rmsprop", 0.1), {}, "rmsprop", None),
        (("sgd", 0.1), {"momentum": 0.9}, "momentum", "0.9"),
        (("nesterov", 0.1), {"nesterov": False}, "nesterov", "False"),
        (("adam", 0.1), {"beta3": 0.5}, "beta3", "0.5"),
        (("sgd", 0.0), {}, "lr", "0.0"),
        (("adam", -1e-3), {}, "lr", "-0.001"),
        (("sgd", math.nan), {}, "lr", "nan"),
        (("sgd", math.inf), {}, "lr", "inf"),
        (("sgd", "0.1"), {}, "lr", "'0.1'"),
        (("momentum", 0.1), {"momentum": 1.0}, "momentum", "1.0"),
        (("nesterov", 0.1), {"momentum": -0.1}, "momentum", "-0.1"),
        (("momentum", 0.1), {"nesterov": "yes"}, "nesterov", "'yes'"),
        (("adam", 0.1), {"beta1": 1.0}, "beta1", "1.0"),
        (("adam", 0.1), {"beta2": 1.5}, "beta2", "1.5"),
        (("adam", 0.1), {"beta2": math.nan}, "beta2", "nan"),
        (("adam", 0.1), {"eps": 0.0}, "eps", "0.0"),
        (("adam", 0.1), {"eps": -1e-8}, "eps", "-1e-08"),
    ],
)
def test_make_optimizer_errors_name_the_culprit(args, options, culprit, value):
    with pytest.raises(ConfigError) as info:
        make_optimizer(*args, **options)
    msg = str(info.value)
    assert f"'{culprit}'" in msg
    if value is not None:
        assert value in msg
    assert "allowed" in msg


def test_unknown_name_lists_the_names():
    with pytest.raises(ConfigError, match="sgd.*momentum.*nesterov.*adam"):
        make_optimizer("Adamw", 0.1)


def test_constructors_validate_too():
    with pytest.raises(ConfigError, match="'lr'"):
        SGD(0)
    with pytest.raises(ConfigError, match="'momentum'"):
        Momentum(0.1, momentum=1)
    with pytest.raises(ConfigError, match="'eps'"):
        Adam(0.1, eps=0)
    opt = SGD(0.1)
    with pytest.raises(ConfigError, match="'lr'"):
        opt.lr = -1.0
    opt.lr = 0.5
    assert opt.lr == 0.5 and opt.hyperparameters()["lr"] == 0.5
