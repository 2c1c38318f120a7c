"""Inverse losses: the objectives that train a learned inverse ``g`` (``Inverse.loss``).

An inverse with parameter groups (:mod:`tpgraph.inverses`: the ``learned``
and ``adjoint`` kinds) is trained by one loss of this registry
(:func:`register_inverse_loss`, :func:`get_inverse_loss`). The dense runner
(:mod:`tpgraph.kinds`, ``inverse_grads``) prepares what every loss reads and
then calls :meth:`InverseLoss.grads`, which writes the loss per member into
``sb.recon`` and adds the gradients for ``V`` (``inv.weight``), ``c``
(``inv.bias``) and a joint inverse's context group. What is prepared, with
``eps = noise * sb.noise`` when the inverse has noise:

``sb.gf``
    ``g(h_v)``, the inverse at the forward value (``sb.fh``: ``phi(h_v)``
    for an inverse with features; :func:`value_features`);
``sb.xn``, ``sb.fn``, ``sb.gn`` (noise > 0 only)
    the corrupted input ``h_u + eps``, the inverse's input at ``f(h_u +
    eps)`` (``phi`` of it for an inverse with features) and ``g(f(h_u +
    eps))``; ``sb.cz`` the siblings at the corrupted input for a joint
    inverse (``sb.cy`` at the forward values).

``"reconstruction"`` (:class:`ReconstructionLoss`, the default)
    ``1/2 ||g(f(h_u + eps)) - (h_u + eps)||^2`` (Lee et al. 2015), or
    ``1/2 ||g(h_v) - h_u||^2`` without noise;
``"difference"`` (:class:`DifferenceLoss`, Meulemans et al. 2020)
    ``1/2 ||g(f(h_u + eps)) - g(f(h_u)) - eps||^2``;
``"jacobian"`` (:class:`JacobianLoss`, Ernoult et al. 2022)
    ``[-eps . (g(f(h_u + eps)) - g(f(h_u))) + 1/2 ||g(h_v + eta) - g(h_v)||^2] / noise^2``
    with a second draw ``eta`` at ``h_v``; one-to-one inverses only.

See :class:`tpgraph.nodes.Inverse` for what each asks of ``g``. A new loss
is a subclass of :class:`InverseLoss` registered under its ``name``: it says
whether it needs noise and takes a context, which per-slot arrays it needs
beyond the prepared ones (:meth:`InverseLoss.buffers`, named among
:data:`LOSS_BUFFERS`), and writes :meth:`InverseLoss.grads`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from .errors import GraphError
from .registry import Registry
from .kernels import dense as kd
from .kernels.activations import add_bias_activate

#: Per-slot arrays a loss may ask for (:meth:`InverseLoss.buffers`), each ``[m, B, width]`` with a
#: ``[m*B, width]`` view named with a ``2``: ``dgf`` (a gradient at ``g(h_v)``'s pre-activation),
#: ``ve`` (a second input at ``h_v``), ``ge`` and ``dge`` (``g`` there and its gradient).
LOSS_BUFFERS = ("dgf", "ve", "ge", "dge")


def value_features(eng, st, b, inv, sb):
    """The inverse's input at the forward values: ``phi(h_v)`` in ``sb.fh`` for a kind with features, else ``h_v``.

    ``sb.fh`` is written once per step (while ``sb.ready`` is false), then
    reused by the inverse's training.
    """
    if sb.fh2 is None:
        return b.h2
    if not sb.ready:
        inv.impl.features(eng, st, b.h2, sb.fh2)
    return sb.fh2


def bias_grads(eng, inv, *pre_grads):
    """Add the column sums of the inverse's pre-activation gradients to its bias ``c`` (if it has one)."""
    if inv.bias:
        g = eng.grad_target(inv.bias)
        for d in pre_grads:
            g += d.sum(axis=0)


class InverseLoss(ABC):
    """Base class of inverse losses (one instance per loss, shared by every graph and engine)."""

    #: The name ``Inverse.loss`` (and ``method.inverse_loss``) takes.
    name: ClassVar[str] = ""
    #: Identically 0 (or undefined) without noise: refused for an inverse with ``noise == 0``.
    needs_noise: ClassVar[bool] = False
    #: May train a joint (many-to-one) inverse, one with a context.
    takes_context: ClassVar[bool] = True

    def buffers(self, n_node: int, n_src: int) -> dict[str, int]:
        """The arrays (names of :data:`LOSS_BUFFERS`) and their widths it needs beyond the prepared ones."""
        return {}

    @abstractmethod
    def grads(self, eng, st, b, slot, sb, gcode) -> None:
        """Write the loss per member into ``sb.recon`` and add its gradients (``gcode``: ``g``'s activation code)."""

    def __repr__(self):
        return f"{type(self).__name__}({self.name!r})"


class ReconstructionLoss(InverseLoss):
    """``reconstruction``: ``1/2 ||g(f(h_u + eps)) - (h_u + eps)||^2`` (a denoising auto-encoder)."""

    name = "reconstruction"

    def grads(self, eng, st, b, slot, sb, gcode):
        inv = slot.inverse
        if inv.noise > 0:
            g, x, inp, ctx_inp = sb.gn, sb.xn, sb.fn2, sb.cz2
        else:
            g, x, inp, ctx_inp = sb.gf, sb.x, value_features(eng, st, b, inv, sb), sb.cy2
        kd.inverse_residual(g, x, gcode, inv.slope, sb.dg, sb.recon)
        eng.add_grad(inv.weight, sb.dg2.T, inp)
        if slot.context is not None:
            eng.add_grad(slot.context.group, sb.dg2.T, ctx_inp)
        bias_grads(eng, inv, sb.dg2)


class DifferenceLoss(InverseLoss):
    """``difference`` (Meulemans et al. 2020): ``1/2 ||g(f(h_u + eps)) - g(f(h_u)) - eps||^2``.

    The full gradient, through both ``g`` terms: ``dV = dgn^T f(h_u + eps) +
    dgf^T h_v`` (``phi`` of both for an inverse with features) and ``dc`` the
    column sums of ``dgn + dgf``; a joint inverse's context group through the
    siblings at the corrupted and the clean input.
    """

    name = "difference"
    needs_noise = True

    def buffers(self, n_node, n_src):
        return {"dgf": n_src}

    def grads(self, eng, st, b, slot, sb, gcode):
        inv = slot.inverse
        kd.difference_residual(sb.gn, sb.gf, sb.noise, sb.noise.dtype.type(inv.noise), gcode, inv.slope,
                               sb.dg, sb.dgf, sb.recon)
        eng.add_grad(inv.weight, sb.dg2.T, sb.fn2)
        eng.add_grad(inv.weight, sb.dgf2.T, value_features(eng, st, b, inv, sb))
        ctx = slot.context
        if ctx is not None:
            eng.add_grad(ctx.group, sb.dg2.T, sb.cz2)
            eng.add_grad(ctx.group, sb.dgf2.T, sb.cy2)
        bias_grads(eng, inv, sb.dg2, sb.dgf2)


class JacobianLoss(InverseLoss):
    """``jacobian`` (Ernoult et al. 2022): ``g``'s Jacobian towards the transpose of ``f``'s.

    Draws ``eta`` (after ``eps``, from the engine's generator), writes ``sb.ve
    = h_v + eta`` (``phi`` of it for an inverse with features) and ``sb.ge =
    g(h_v + eta)`` (the other inputs at their forward values, in ``sb.og``
    with ``c``), then ``dV = dgn^T f(h_u + eps) + dge^T (h_v + eta) + dgf^T
    h_v`` and ``dc`` the column sums of the three
    (:func:`~tpgraph.kernels.dense.jacobian_residual`).
    """

    name = "jacobian"
    needs_noise = True
    takes_context = False

    def buffers(self, n_node, n_src):
        return {"dgf": n_src, "ve": n_node, "ge": n_src, "dge": n_src}

    def grads(self, eng, st, b, slot, sb, gcode):
        inv = slot.inverse
        sigma = sb.noise.dtype.type(inv.noise)
        eng.rng.standard_normal(out=sb.ve, dtype=sb.ve.dtype)
        sb.ve *= sigma
        sb.ve += b.h
        inv.impl.features(eng, st, sb.ve2, sb.ve2)
        np.dot(sb.ve2, eng.wt[inv.weight], out=sb.ge2)
        add_bias_activate(sb.ge2, sb.og2, eng.zero_src[sb.ge.shape[2]], gcode, inv.slope, sb.ge2)
        kd.jacobian_residual(sb.gn, sb.gf, sb.ge, sb.noise, sigma, gcode, inv.slope, sb.dg, sb.dgf, sb.dge,
                             sb.recon)
        eng.add_grad(inv.weight, sb.dg2.T, sb.fn2)
        eng.add_grad(inv.weight, sb.dge2.T, sb.ve2)
        eng.add_grad(inv.weight, sb.dgf2.T, value_features(eng, st, b, inv, sb))
        bias_grads(eng, inv, sb.dg2, sb.dge2, sb.dgf2)


# ---------------------------------------------------------------------- the registry
def _check_buffers(loss: InverseLoss) -> None:
    unknown = set(loss.buffers(1, 1)) - set(LOSS_BUFFERS)
    if unknown:
        raise GraphError(f"inverse loss {loss.name!r} asks for buffers {sorted(unknown)}; a loss may use "
                         f"{', '.join(LOSS_BUFFERS)}")


_REGISTRY: Registry[InverseLoss] = Registry("inverse loss", InverseLoss, "register_inverse_loss", _check_buffers)


def register_inverse_loss(loss: InverseLoss | type, overwrite: bool = False) -> InverseLoss:
    """Register an inverse loss (an instance, or a subclass of :class:`InverseLoss`) under its ``name``.

    Returns the registered instance. Raises :class:`~tpgraph.errors.GraphError`
    if the name is taken (unless ``overwrite``), the object is not a loss, or
    it asks for a buffer not in :data:`LOSS_BUFFERS`.
    """
    return _REGISTRY.register(loss, overwrite)


def known_inverse_losses() -> list[str]:
    """Names of all registered inverse losses, in registration order."""
    return _REGISTRY.known()


def get_inverse_loss(name, where: str | None = None) -> InverseLoss:
    """The loss registered as ``name``; a GraphError naming ``where`` and listing the known losses otherwise."""
    return _REGISTRY.get(name, where)


for _cls in (ReconstructionLoss, DifferenceLoss, JacobianLoss):
    register_inverse_loss(_cls)
