"""Inverse kinds: how the inverse ``g`` of a dense node with respect to one input is made.

``dtp`` and ``tp`` edges (:mod:`tpgraph.rules`) propose through an inverse
``g`` of the consumer ``v`` with respect to the input ``u``:
``dtp``: ``tau = h_u + g(h_hat_v) - g(h_v)``; ``tp``: ``tau = g(h_hat_v)``.
An inverse is declared with :meth:`tpgraph.graph.Graph.add_inverse` and
stored as a :class:`tpgraph.nodes.Inverse` whose ``kind`` names one object of
this registry (:func:`register_inverse_kind`, :func:`get_inverse_kind`). The
rules, the runner of dense nodes and the engine ask that object what it needs
and how it proposes; they never test its name.

``"learned"`` (:class:`LearnedInverse`, the default; the paper's Eqs. 16-17)
    ``g(h) = act(V h + sum_{i != u} W_i h_i + c)``: ``V`` and ``c`` are the
    inverse's own parameter groups, trained by the engine as a denoising
    auto-encoder (see :mod:`tpgraph.kinds`, ``inverse_grads``).
``"adjoint"`` (:class:`AdjointInverse`)
    ``g(h) = V phi(h) + sum_{i != u} W_i h_i + c``, linear in the features
    ``phi`` of the node's activation (:func:`adjoint_features`:
    ``phi'(h) = act'`` written through the output, ``h - h^3/3`` for tanh).
    Its Jacobian ``V diag(act'(.))`` has the shape of the node's transposed
    Jacobian ``W_u^T diag(act'(.))``, so it *can* equal it (with ``V =
    W_u^T``), which the learned kind's ``diag(act_g') V`` cannot; trained like
    the learned kind, and meant for the Jacobian-matching loss, whose
    minimiser it then is (:class:`AdjointInverse`).
``"analytic"`` (:class:`AnalyticInverse`; Roulet & Harchaoui)
    for ``h_v = tanh(W_u h_u + sum_{i != u} W_i h_i + b)``, the regularised
    least-squares inverse
    ``g(h) = (W_u^T W_u + reg I)^-1 W_u^T (atanh(clip(h)) - sum_{i != u} W_i h_i - b)``
    with ``clip(h)`` into ``[-1 + clip, 1 - clip]``. It has no parameters and
    is not trained; the matrix ``M = (W_u^T W_u + reg I)^-1 W_u^T`` is rebuilt
    from the live forward weight before every target pass (one linear
    solve per weight group and ``reg``, :meth:`AnalyticInverse.refresh`). Its
    reconstruction loss ``1/2 ||g(h_v) - h_u||^2`` is reported like the learned
    one's (it measures what the regularisation and the clip cost), never
    trained. Only tanh nodes may carry it.

A new kind is a subclass of :class:`InverseKind` registered under its
``name``. It writes the inverse at the forward value (:meth:`InverseKind.at_forward`),
the batched proposal (:meth:`InverseKind.propose`) and the chain scan
(:meth:`InverseKind.scan`), and says whether it has parameter groups of its own.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from .errors import GraphError
from .registry import Registry
from .kernels import dense as kd
from .kernels.activations import ACTIVATIONS, IDENTITY, feature_sum

#: Defaults of the analytic inverse: the regularisation ``reg`` and the clip of atanh's argument.
#: ``reg = 0.1``: ``M`` multiplies a singular direction of ``W`` with singular value ``s`` by
#: ``s / (s^2 + reg)``, at most ``1 / (2 sqrt(reg))`` ~ 1.58 whatever ``W`` becomes (no blow-up when
#: ``W`` turns near-singular during training), while the orthogonal initial ``W_h`` (every ``s = 1``)
#: is inverted to within a factor ``1 / 1.1``. ``clip = 1e-3``: ``|atanh| <= 3.8``, its slope <= 500.
ANALYTIC_REG = 0.1
ANALYTIC_CLIP = 1e-3


class InverseKind(ABC):
    """Base class of inverse kinds (one instance per kind, shared by every graph and engine)."""

    #: The name :meth:`~tpgraph.graph.Graph.add_inverse` takes as ``kind``.
    name: ClassVar[str] = ""
    #: Has parameter groups of its own (``V``, ``c``) that the engine trains.
    has_params: ClassVar[bool] = True
    #: May read a sibling consumer's value and target (a many-to-one inverse, ``Inverse.context``).
    supports_context: ClassVar[bool] = False
    #: Applies features ``phi`` to its input (buffers then keep ``phi(h_v)`` in ``sb.fh``).
    has_features: ClassVar[bool] = False
    #: The activation the inverse must have, if the kind fixes it (a model declaring it uses this one).
    fixed_act: ClassVar[str | None] = None

    def check(self, node, inv, where: str) -> None:
        """Refuse an inverse this kind cannot be for ``node`` (a :class:`~tpgraph.nodes.Dense`): a GraphError naming ``where``.

        The base refuses an activation other than :attr:`fixed_act`, when the kind fixes one.
        """
        if self.fixed_act is not None and inv.act != self.fixed_act:
            raise GraphError(f"{where}: the {self.name!r} inverse fixes its activation, so its act must be "
                             f"{self.fixed_act!r}, got {inv.act!r}")

    def groups(self, inv) -> tuple:
        """The inverse's own parameter groups (trained by the engine)."""
        return ()

    def og_size(self, n_src: int, n_node: int) -> int:
        """Width of the buffer ``og`` of a slot with this inverse (input ``n_src`` wide, node ``n_node``)."""
        return n_src

    # ------------------------------------------------------------------ the engine's side
    def setup(self, eng, slots) -> bool:
        """Per-engine state for the ``slots`` that use this kind; True if :meth:`refresh` must run each step."""
        return False

    def refresh(self, eng) -> None:
        """Rebuild what the kind derives from the live parameters, before the target pass of a step."""

    @abstractmethod
    def at_forward(self, runner, eng, st, b, slot, sb) -> None:
        """``sb.og`` (what the inverse takes from the other inputs) and ``sb.gf = g(h_v)``, once per step."""

    def at_target(self, runner, eng, st, b, slot, sb) -> None:
        """What the inverse takes from the targets beyond ``h_hat_v`` (a context's), before proposing; after :meth:`at_forward`."""

    @abstractmethod
    def propose(self, runner, eng, st, b, slot, sb, difference: bool) -> None:
        """Write ``g(h_hat_v) - g(h_v)`` (``difference``) or ``g(h_hat_v) - h_u`` into ``sb.p2`` (a non-recurrent slot)."""

    @abstractmethod
    def scan(self, eng, st, b, slot, sb, code, inv_count, start: int, stop: int, difference: bool) -> None:
        """The same through a chain's recurrent slot, members ``start`` down to ``stop``, merged in the kernel."""

    def report(self, runner, eng, st, b, slot, sb) -> None:
        """For a kind without parameters: its reconstruction loss ``sb.recon`` (nothing is trained)."""

    # ------------------------------------------------------------------ the mathematics
    @abstractmethod
    def reference(self, inv, h, *, others, weight=None, bias=None, inverse_weight=None, inverse_bias=None,
                  act=None):
        """Plain-NumPy ``g(h)`` ``[B, n_u]`` for one node (tests and reading).

        ``h`` ``[B, n_v]``; ``others`` ``sum_{i != u} W_i h_i`` ``[B, n_v]``
        (zeros for ``others="none"``); ``weight`` and ``bias`` the node's
        forward ``W_u`` and ``b``; ``inverse_weight``, ``inverse_bias`` ``V``
        and ``c``; ``act`` a NumPy function for the inverse's activation.
        """

    def __repr__(self):
        return f"{type(self).__name__}({self.name!r})"


class LearnedInverse(InverseKind):
    """``learned``: ``g(h) = act(V h + others + c)``, ``V`` and ``c`` trained (the paper's ``G``)."""

    name = "learned"
    has_params = True
    supports_context = True

    def groups(self, inv):
        return tuple(g for g in (inv.weight, inv.bias, inv.context) if g is not None)

    def feature_code(self, eng, st) -> tuple:
        """``(code, slope, clamp)`` of the features ``phi`` the inverse applies to its input: none (IDENTITY) here."""
        return IDENTITY, 0.0, False

    def features(self, eng, st, x2, out2):
        """``phi(x2)`` (2-D), written into ``out2`` (which may be ``x2``) and returned; ``x2`` itself here."""
        return x2

    def at_forward(self, runner, eng, st, b, slot, sb):
        runner.inverse_at_forward(eng, st, b, slot, sb)

    def at_target(self, runner, eng, st, b, slot, sb):
        """A joint inverse: ``ogt = og + V_s h_hat_s``, the siblings' targets (final: they come later in order)."""
        ctx = slot.context
        if ctx is None:
            return
        sib = eng.buf.stacks[ctx.src]
        kd.gather_sum_or_zero(sb.cz, sib.h, sib.d, ctx.rows)
        np.dot(sb.cz2, eng.wt[ctx.group], out=sb.ogt2)
        sb.ogt2 += sb.og2

    @staticmethod
    def _og_target(slot, sb):
        """What the inverse adds at the targets: ``og``, plus the context's targets for a joint inverse."""
        return sb.og if slot.context is None else sb.ogt

    def propose(self, runner, eng, st, b, slot, sb, difference):
        self.at_forward(runner, eng, st, b, slot, sb)
        self.at_target(runner, eng, st, b, slot, sb)
        inv = slot.inverse
        np.add(b.h2, b.d2, out=b.z2)  # the targets h_hat_v
        np.dot(self.features(eng, st, b.z2, b.z2), eng.wt[inv.weight], out=sb.p2)
        ref = sb.gf2 if difference else sb.x2
        og2 = sb.og2 if slot.context is None else sb.ogt2
        kd.inverse_finish(sb.p2, og2, ref, eng.inv_codes[(st.id, slot.index)], inv.slope)

    def scan(self, eng, st, b, slot, sb, code, inv_count, start, stop, difference):
        inv = slot.inverse
        og = self._og_target(slot, sb)
        fcode, fslope, fclamp = self.feature_code(eng, st)
        jm = eng.jit_merges.get(st.id)
        if jm is not None:  # a compiled merge strategy, called inside the scan
            args = (jm.fn, jm.params, b.d, b.hext, eng.wt[inv.weight], og, sb.gf,
                    eng.inv_codes[(st.id, slot.index)], inv.slope, fcode, fslope, fclamp, start, stop, difference,
                    sb.p, b.tmp)
            if eng.gemm is not None:
                kd.scan_inverse_merge_cblas(eng.gemm, eng.one, eng.zero, *args)
            else:
                kd.scan_inverse_merge(*args)
            return
        args = (b.d, b.hext, eng.wt[inv.weight], og, sb.gf, eng.inv_codes[(st.id, slot.index)],
                inv.slope, fcode, fslope, fclamp, inv_count, start, stop, difference, sb.p, b.tmp)
        if eng.gemm is not None:
            kd.scan_inverse_cblas(eng.gemm, eng.one, eng.zero, *args)
        else:
            kd.scan_inverse(*args)

    def reference(self, inv, h, *, others, weight=None, bias=None, inverse_weight=None, inverse_bias=None,
                  act=np.tanh, context=None, context_weight=None):
        """As :meth:`InverseKind.reference`; a joint inverse adds ``context @ context_weight^T`` (``h_s``, ``V_s``)."""
        if inverse_weight is None:
            raise GraphError("inverse kind 'learned': the reference needs the inverse's weight V")
        z = h @ np.asarray(inverse_weight).T + others
        if context is not None:
            z = z + np.asarray(context) @ np.asarray(context_weight).T
        if inverse_bias is not None:
            z = z + inverse_bias
        return act(z)


#: The output range of each bounded activation: the adjoint features' clamp (``adjoint_clamped``).
ACT_RANGES = {"tanh": (-1.0, 1.0), "sigmoid": (0.0, 1.0)}


def adjoint_features(x, act: str = "tanh", slope: float = 0.01, clamp: bool = False):
    """Plain-NumPy ``phi(x)`` of the adjoint inverse for a node of activation ``act``.

    ``phi`` is the antiderivative of the activation's derivative written
    through its output (:func:`~tpgraph.kernels.activations.deriv_scalar`):
    ``phi'(h) = act'`` at the pre-activation whose output is ``h``. tanh:
    ``x - x^3/3``; sigmoid: ``x^2/2 - x^3/3``; relu: ``max(x, 0)``; leaky
    relu: ``x`` or ``slope x``; identity: ``x``. With ``clamp``, ``x`` is
    first clipped into the activation's output range (:data:`ACT_RANGES`),
    so ``phi`` is flat outside it.
    """
    x = np.asarray(x, dtype=np.float64)
    if clamp and act in ACT_RANGES:
        x = np.clip(x, *ACT_RANGES[act])
    if act == "tanh":
        return x - x ** 3 / 3
    if act == "sigmoid":
        return x ** 2 / 2 - x ** 3 / 3
    if act == "relu":
        return np.maximum(x, 0.0)
    if act == "leaky_relu":
        return np.where(x > 0, x, slope * x)
    if act == "identity":
        return x
    raise GraphError(f"adjoint features: unknown activation {act!r}; known: {', '.join(ACTIVATIONS)}")


class AdjointInverse(LearnedInverse):
    """``adjoint``: ``g(h) = V phi(h) + others + c``, linear in the node's adjoint features, ``V`` and ``c`` trained.

    For ``h_v = act(W_u h_u + ...)`` the step's Jacobian is ``J_f = diag(act'(.))
    W_u`` and ``g``'s is ``J_g = V diag(phi'(h_v)) = V diag(act'(.))``: the
    transpose ``J_f^T`` is the member ``V = W_u^T`` of the family, at every
    state at once. ``dtp``'s displacement ``g(h_hat_v) - g(h_v) = V (phi(h_hat_v)
    - phi(h_v))`` is then ``J_f^T (h_hat_v - h_v)`` to first order: the chain
    rule's step, without the weight being transported.

    Trained by the Jacobian-matching loss (``loss="jacobian"``), ``V``'s
    gradient is linear in ``V``: with ``D = diag(act'(.))`` at ``h_v``,
    ``E[dL/dV] ~ V sum D^2 - W_u^T sum D^2`` to first order in the noise, so
    ``V = W_u^T`` is its one stationary point whatever the states (``sum D^2``
    is positive definite), where the learned kind's optimum is a compromise.
    The other losses train it too (a linear regression on ``phi(h_v)``).
    The inverse's activation must be ``identity`` (``g`` is linear in
    ``phi``); it takes no context. The features are computed in the scans and
    batched products (:func:`~tpgraph.kernels.activations.feature_sum`).
    """

    name = "adjoint"
    supports_context = False
    has_features = True
    fixed_act = "identity"  # g is linear in phi
    #: Clip the features' argument into the activation's output range (:class:`ClampedAdjointInverse`).
    clamp: ClassVar[bool] = False

    def feature_code(self, eng, st):
        return eng.codes[st.id], float(st.node.slope), self.clamp

    def features(self, eng, st, x2, out2):
        code, slope, clamp = self.feature_code(eng, st)
        feature_sum(x2, None, code, slope, clamp, out2)
        return out2

    def reference(self, inv, h, *, others, weight=None, bias=None, inverse_weight=None, inverse_bias=None,
                  act=None, node_act="tanh", node_slope=0.01):
        """As :meth:`InverseKind.reference`, with ``node_act`` (and ``node_slope``) the forward node's activation."""
        if inverse_weight is None:
            raise GraphError("inverse kind 'adjoint': the reference needs the inverse's weight V")
        z = (adjoint_features(h, node_act, node_slope, self.clamp) @ np.asarray(inverse_weight, dtype=np.float64).T
             + others)
        if inverse_bias is not None:
            z = z + inverse_bias
        return z


class ClampedAdjointInverse(AdjointInverse):
    """``adjoint_clamped``: the adjoint inverse with its features' argument clipped into the activation's range.

    ``g(h) = V phi(clip(h, lo, hi)) + others + c`` with ``[lo, hi]`` the
    output range of the node's activation (:data:`ACT_RANGES`: tanh
    ``[-1, 1]``, sigmoid ``[0, 1]``; the others are not clipped). The two
    kinds agree wherever ``h`` is in the range (every forward value); they
    differ for targets outside it. There the plain ``phi(h) = h - h^3/3``
    turns back and then grows as ``-h^3/3``, so under a merge that does not
    bound the targets (the linear merge over long chains) displacements can
    grow without limit; the clamped ``phi`` is flat there, as tanh is (a
    target beyond the range is unreachable, and it passes no credit).
    """

    name = "adjoint_clamped"
    clamp = True


def analytic_matrix(weight, reg: float) -> np.ndarray:
    """``M = (W^T W + reg I)^-1 W^T`` ``[n_u, n_v]`` for ``W [n_v, n_u]``, in float64 (one linear solve).

    ``M y`` is the minimiser of ``||W x - y||^2 + reg ||x||^2``. A non-finite
    ``W`` gives a NaN matrix (the step's targets then fail the engine's
    finiteness checks, which name the culprit). NumPy's LAPACK, not SciPy's:
    SciPy ships a second OpenBLAS whose threads, busy-waiting between calls,
    slowed NumPy's products (the rest of the step) by an order of magnitude
    on a loaded two-core machine.
    """
    w = np.asarray(weight, dtype=np.float64)
    if not np.all(np.isfinite(w)):
        return np.full(w.T.shape, np.nan)
    a = w.T @ w
    a[np.diag_indices_from(a)] += reg
    return np.linalg.solve(a, w.T)  # a is symmetric positive definite (reg > 0): always solvable


class AnalyticInverse(InverseKind):
    """``analytic``: the regularised inverse of a tanh layer (Roulet & Harchaoui), no parameters.

    ``g(h) = M (atanh(clip(h)) - sum_{i != u} W_i h_i - b)``, ``M = (W_u^T W_u
    + reg I)^-1 W_u^T`` from the live forward weight ``W_u``; with
    ``others="none"`` the other inputs are left out (``- b`` only). The engine
    keeps ``M^T`` per ``(weight group, reg)`` in ``engine.inverse_mats[("analytic",
    group, reg)]``, refreshed before each step's target pass.
    """

    name = "analytic"
    has_params = False

    def check(self, node, inv, where):
        if node.act != "tanh":
            raise GraphError(f"{where}: the analytic inverse inverts tanh (atanh), but node {node.name!r} has "
                             f"act {node.act!r}; use a tanh node or kind='learned'")
        reg = inv.reg
        if isinstance(reg, bool) or not isinstance(reg, (int, float)) or not math.isfinite(reg) or reg <= 0:
            raise GraphError(f"{where}: reg (the analytic inverse's regularisation) must be a finite number > 0, "
                             f"got {reg!r}")
        clip = inv.clip
        if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not (0 < clip < 1):
            raise GraphError(f"{where}: clip (of atanh's argument, into [-1 + clip, 1 - clip]) must be a number "
                             f"in (0, 1), got {clip!r}")
        if inv.weight is not None or inv.bias is not None:
            raise GraphError(f"{where}: the analytic inverse has no parameter groups of its own; leave weight and "
                             f"bias out (got {inv.weight!r}, {inv.bias!r})")
        if inv.noise != 0:
            raise GraphError(f"{where}: the analytic inverse is not trained, so it takes no noise (got {inv.noise!r})")

    def og_size(self, n_src, n_node):
        return n_node  # the rest of the node's pre-activation

    @staticmethod
    def _key(slot):
        return ("analytic", slot.weight, float(slot.inverse.reg))

    def setup(self, eng, slots):
        for slot in slots:
            key = self._key(slot)
            if key not in eng.inverse_mats:
                eng.inverse_mats[key] = np.zeros(eng.params[slot.weight].shape, dtype=eng.graph.dtype)
        return True

    def refresh(self, eng):
        for key, mt in eng.inverse_mats.items():
            if key[0] == self.name:
                _, group, reg = key
                np.copyto(mt, analytic_matrix(eng.params[group], reg).T)

    @staticmethod
    def _lim(eng, inv):
        return eng.graph.dtype.type(1.0 - inv.clip)

    def at_forward(self, runner, eng, st, b, slot, sb):
        if sb.ready:
            return
        from .kinds import other_inputs  # the kinds import the plan, which imports the nodes that import this

        inv = slot.inverse
        node = st.node
        other_inputs(eng, st, b, slot, sb)
        if node.bias:
            sb.og2 += eng.params[node.bias]
        kd.atanh_residual(b.h2, b.h2, sb.og2, self._lim(eng, inv), False, b.z2)
        np.dot(b.z2, eng.inverse_mats[self._key(slot)], out=sb.gf2)
        sb.ready = True

    def propose(self, runner, eng, st, b, slot, sb, difference):
        self.at_forward(runner, eng, st, b, slot, sb)
        kd.atanh_residual(b.h2, b.d2, sb.og2, self._lim(eng, slot.inverse), True, b.z2)  # targets h_hat_v
        np.dot(b.z2, eng.inverse_mats[self._key(slot)], out=sb.p2)
        kd.subtract_into(sb.p2, sb.gf2 if difference else sb.x2)

    def scan(self, eng, st, b, slot, sb, code, inv_count, start, stop, difference):
        mt = eng.inverse_mats[self._key(slot)]
        lim = self._lim(eng, slot.inverse)
        jm = eng.jit_merges.get(st.id)
        if jm is not None:  # a compiled merge strategy, called inside the scan
            args = (jm.fn, jm.params, b.d, b.hext, mt, sb.og, sb.gf, lim, start, stop, difference, sb.p, b.tmp)
            if eng.gemm is not None:
                kd.scan_analytic_merge_cblas(eng.gemm, eng.one, eng.zero, *args)
            else:
                kd.scan_analytic_merge(*args)
            return
        args = (b.d, b.hext, mt, sb.og, sb.gf, lim, inv_count, start, stop, difference, sb.p, b.tmp)
        if eng.gemm is not None:
            kd.scan_analytic_cblas(eng.gemm, eng.one, eng.zero, *args)
        else:
            kd.scan_analytic(*args)

    def report(self, runner, eng, st, b, slot, sb):
        self.at_forward(runner, eng, st, b, slot, sb)
        kd.inverse_residual(sb.gf, sb.x, IDENTITY, 0.0, sb.dg, sb.recon)  # 1/2 ||g(h_v) - h_u||^2 per member

    def reference(self, inv, h, *, others, weight=None, bias=None, inverse_weight=None, inverse_bias=None,
                  act=None):
        if weight is None:
            raise GraphError("inverse kind 'analytic': the reference needs the forward weight W_u")
        lim = 1.0 - inv.clip
        rhs = np.arctanh(np.clip(np.asarray(h, dtype=np.float64), -lim, lim)) - others
        if bias is not None:
            rhs = rhs - bias
        return rhs @ analytic_matrix(weight, inv.reg).T


# ---------------------------------------------------------------------- the registry
_REGISTRY: Registry[InverseKind] = Registry("inverse kind", InverseKind, "register_inverse_kind")


def register_inverse_kind(kind: InverseKind | type, overwrite: bool = False) -> InverseKind:
    """Register an inverse kind (an instance, or a subclass of :class:`InverseKind`) under its ``name``.

    Returns the registered instance. Raises :class:`~tpgraph.errors.GraphError`
    if the name is taken (unless ``overwrite``) or the object is not a kind.
    """
    return _REGISTRY.register(kind, overwrite)


def known_inverse_kinds() -> list[str]:
    """Names of all registered inverse kinds, in registration order."""
    return _REGISTRY.known()


def get_inverse_kind(name, where: str | None = None) -> InverseKind:
    """The kind registered as ``name``; a GraphError naming ``where`` and listing the known kinds otherwise."""
    return _REGISTRY.get(name, where)


for _cls in (LearnedInverse, AnalyticInverse, AdjointInverse, ClampedAdjointInverse):
    register_inverse_kind(_cls)
