"""The registry of inverse losses (:mod:`tpgraph.inverse_losses`): lookup, refusals, and a loss added from outside.

The built-in losses' mathematics is tested against NumPy references in
``test_tp_reference.py`` (reconstruction), ``test_inverse_training.py``
(difference), ``test_jacobian_loss.py`` and ``test_adjoint_inverse.py``.
"""

import numpy as np
import pytest

import tpgraph as tp
from tpgraph.buffers import Buffers, buffer_bytes
from tpgraph.errors import ConfigError, GraphError
from tpgraph.inverse_losses import LOSS_BUFFERS, InverseLoss, ReconstructionLoss, bias_grads
from tpgraph.kernels import dense as kd
from tpgraph.models.srn import SRN
from tpgraph.nodes import INVERSE_LOSSES, NOISY_LOSSES
from tpgraph.train import Config


def test_builtins_and_their_properties():
    assert tp.known_inverse_losses()[:3] == ["reconstruction", "difference", "jacobian"]
    assert INVERSE_LOSSES == ("reconstruction", "difference", "jacobian")
    assert NOISY_LOSSES == ("difference", "jacobian")
    assert not tp.get_inverse_loss("jacobian").takes_context and tp.get_inverse_loss("difference").takes_context
    with pytest.raises(GraphError, match="unknown inverse loss 'recon'; known: reconstruction"):
        tp.get_inverse_loss("recon", "here")


def test_registry_refusals():
    with pytest.raises(GraphError, match="already registered"):
        tp.register_inverse_loss(ReconstructionLoss)
    with pytest.raises(GraphError, match="expects an InverseLoss"):
        tp.register_inverse_loss(object())

    class Nameless(ReconstructionLoss):
        name = ""

    with pytest.raises(GraphError, match="has no name"):
        tp.register_inverse_loss(Nameless)

    class Greedy(ReconstructionLoss):
        name = "greedy_test_loss"

        def buffers(self, n_node, n_src):
            return {"scratch": n_src}

    with pytest.raises(GraphError, match=r"asks for buffers \['scratch'\]"):
        tp.register_inverse_loss(Greedy)
    assert "greedy_test_loss" not in tp.known_inverse_losses()
    with pytest.raises(GraphError, match="unknown inverse loss"):
        g = tp.Graph()
        g.input("a", 3)
        g.dense("b", ["a"], 3, weights=["W"])
        g.add_inverse("b", of="a", weight="V", loss="nope")
    with pytest.raises(ConfigError, match="inverse_loss must be one of"):
        SRN(3, 4, 3, inverse_loss="nope")
    with pytest.raises(ConfigError, match="method.inverse_loss must be one of 'reconstruction'"):
        Config.from_dict({"method": {"inverse_loss": "nope"}})


class WeightedReconstruction(InverseLoss):
    """A loss from outside the library: ``w/2 ||g(h_v) - h_u||^2`` with a second buffer for the residual."""

    name = "weighted_reconstruction_test"
    weight = 3.0

    def buffers(self, n_node, n_src):
        return {"dgf": n_src}

    def grads(self, eng, st, b, slot, sb, gcode):
        inv = slot.inverse
        kd.inverse_residual(sb.gf, sb.x, gcode, inv.slope, sb.dgf, sb.recon)
        sb.recon *= self.weight
        sb.dgf *= self.weight
        eng.add_grad(inv.weight, sb.dgf2.T, b.h2)
        bias_grads(eng, inv, sb.dgf2)


def test_a_registered_loss_trains_the_inverse():
    tp.register_inverse_loss(WeightedReconstruction, overwrite=True)

    def step(loss):
        g = tp.build_srn(4, 3, 5, 3, dtype="float64", inverse_loss=loss)
        eng = tp.Engine(g, alpha=0.3, seed=2, fast_tanh=False)
        rng = np.random.default_rng(5)
        for k in sorted(eng.params):
            eng.params[k] = rng.normal(0, 0.4, eng.params[k].shape)
        batch = {("h_0",): np.zeros((1, 6, 5)), tuple(f"x_{t}" for t in range(1, 5)): rng.integers(0, 3, (4, 6)),
                 tuple(f"l_{t}" for t in range(1, 5)): rng.integers(0, 3, (4, 6))}
        eng.step(batch, apply=False)
        return eng

    # the configuration takes it too (its choices are the registry's at validation)
    assert Config.from_dict({"method": {"inverse_loss": WeightedReconstruction.name}}).method.inverse_loss \
        == WeightedReconstruction.name
    plain, weighted = step("reconstruction"), step(WeightedReconstruction.name)
    for k in ("V_h", "c_h"):
        np.testing.assert_allclose(weighted.grads[k], 3.0 * plain.grads[k], rtol=1e-12, atol=1e-14)
    rp, rw = plain.reconstruction_losses(), weighted.reconstruction_losses()
    assert all(rw[k] == pytest.approx(3.0 * rp[k], rel=1e-12) for k in rp)
    # the loss's buffer is allocated and counted
    sid, _ = weighted.plan.where["h_2"]
    assert weighted.buf.stacks[sid].slots[1].dgf is not None
    assert plain.buf.stacks[sid].slots[1].dgf is None
    assert buffer_bytes(weighted.plan, 6, np.float64) == Buffers(weighted.plan, 6, np.float64).nbytes


def test_loss_buffers_are_slots_of_the_buffers():
    from tpgraph.buffers import SlotBuffers

    assert set(LOSS_BUFFERS) | {n + "2" for n in LOSS_BUFFERS} <= set(SlotBuffers.__slots__)
