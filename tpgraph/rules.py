"""Credit rules: how a target for a consumer's output becomes a proposal for one input.

A credit rule is chosen per edge ``u -> v`` by the consumer ``v``. It is one
object in one registry (:func:`register_rule`, :func:`get_rule`): it says what
it needs from the graph and from the engine, and how it proposes, delegating
the arithmetic to the kernels of :mod:`tpgraph.kernels` (through the dense
kind's runner in :mod:`tpgraph.kinds`). The scheduler never tests a rule's
name; it asks the rule.

With ``h`` forward values, ``h_hat`` targets, ``a_v`` the consumer's
pre-activation and ``f'`` its activation's derivative:

``"dtp"`` (:class:`DifferenceTargetProp`, Eqs. 12, 19)
    ``tau = h_u + g(h_hat_v) - g(h_v)``; needs an inverse ``g`` (of a kind of
    :mod:`tpgraph.inverses`: learned or analytic);
``"tp"`` (:class:`TargetProp`, Eq. 11)
    ``tau = g(h_hat_v)``; needs an inverse;
``"gradient"`` (:class:`Gradient`)
    ``tau = h_u + W^T (f'(a_v) * (h_hat_v - h_v))``, the local vector-Jacobian
    product of one node (no chain rule);
``"fa"`` (:class:`FeedbackAlignment`, Lillicrap et al. 2016)
    ``tau = h_u + B^T (f'(a_v) * (h_hat_v - h_v))`` with a fixed random
    feedback matrix ``B`` (the shape of ``W``) in place of the forward weight;
    needs forward weights to stand in for, and a feedback matrix (made by the
    engine, seeded, never trained);
``"none"`` (:class:`NoCredit`)
    no credit flows;
``"dtp_after"`` (:class:`DifferenceTargetPropAfter`, Roulet & Harchaoui)
    dtp with the consumer's displacements split (propagated by inversion /
    the rest) and inverted apart: merged *after* inversion, not before.

Each rule also carries a plain-NumPy :meth:`CreditRule.reference` of its
proposal for one edge of a dense node, against which the kernels are tested.

A variant is a subclass registered under a new name; for instance a
feedback-alignment variant with other feedback matrices overrides
:meth:`FeedbackAlignment.make_feedback`.
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from typing import Callable, ClassVar

import numpy as np

from .errors import GraphError
from .registry import Registry
from .kernels import dense as kd


class CreditRule(ABC):
    """Base class of credit rules.

    Class attributes say what a rule needs; the scheduler, the validation,
    the plan and the buffers query them instead of the rule's name.
    """

    #: The name graphs use for this rule.
    name: ClassVar[str] = ""
    #: Whether credit flows on the edge at all (``none``: no).
    carries_credit: ClassVar[bool] = True
    #: Needs a learned inverse of the consumer with respect to the input (trained by the engine).
    needs_inverse: ClassVar[bool] = False
    #: Needs the consumer's forward weights (a node kind without weights cannot use it).
    needs_weights: ClassVar[bool] = False
    #: Needs a fixed feedback matrix per forward weight group (made by the engine, never trained).
    needs_feedback: ClassVar[bool] = False
    #: May be a loss's prediction edge (a loss always proposes ``h - alpha dL/dh``).
    for_losses: ClassVar[bool] = False
    #: The chain scan of this rule computes every member's ``delta = D * f'`` itself.
    scan_computes_delta: ClassVar[bool] = False
    #: Can propose through a many-to-one inverse (one with a ``context``; rules through an inverse only).
    takes_context: ClassVar[bool] = True

    def requirement(self) -> str:
        """What the rule needs, in words, for error messages."""
        needs = []
        if self.needs_inverse:
            needs.append("an inverse")
        if self.needs_weights:
            needs.append("forward weights")
        if self.needs_feedback:
            needs.append("a feedback matrix in place of them")
        return " and ".join(needs) or "nothing"

    # ------------------------------------------------------------------ the engine's side
    def prepare(self, runner, eng, st, b, slot, sb) -> None:
        """Work shared by the batched proposal and the scan (e.g. the inverse at the forward value)."""

    @abstractmethod
    def propose(self, runner, eng, st, b, slot, sb) -> None:
        """Write the displacements ``tau - h_u`` of a non-recurrent slot of a dense stack into ``sb.p2``.

        On entry the stack's merged displacement ``b.d2`` and ``b.delta2 = D * f'`` are final.
        """

    @abstractmethod
    def scan(self, eng, st, b, slot, sb, code, inv_count, start: int, stop: int) -> None:
        """Credit back through a chain's recurrent slot, members ``start`` down to ``stop``.

        Each member's proposal to its predecessor is written into ``sb.p[k]``
        and merged into ``b.d[k - 1]`` (scaled by ``inv_count[k - 1]``) inside
        the kernel.
        """

    def make_feedback(self, group: str, shape: tuple, dtype, seed: int) -> np.ndarray | None:
        """The fixed feedback matrix of forward weight ``group`` (rules that need one)."""
        return None

    # ------------------------------------------------------------------ the mathematics
    @abstractmethod
    def reference(self, h_u, h_v, h_hat_v, *, weight=None, deriv=None, inverse: Callable | None = None,
                  feedback=None):
        """Plain-NumPy proposal ``tau`` for input ``u`` of one dense node (for tests and reading).

        ``h_u`` ``[B, n_u]``, ``h_v`` and ``h_hat_v`` ``[B, n_v]``; ``weight``
        the forward weight ``W [n_v, n_u]``; ``deriv`` ``f'(a_v)`` ``[B, n_v]``;
        ``inverse`` a callable ``g(h) -> [B, n_u]`` with the other inputs at
        their forward values; ``feedback`` ``B [n_v, n_u]``. Returns None
        when no credit flows.
        """

    def __repr__(self):
        return f"{type(self).__name__}({self.name!r})"


class NoCredit(CreditRule):
    """``none``: no credit flows on the edge."""

    name = "none"
    carries_credit = False

    def propose(self, runner, eng, st, b, slot, sb) -> None:
        return None  # nothing is proposed: the plan never asks an edge without credit

    def scan(self, eng, st, b, slot, sb, code, inv_count, start, stop) -> None:
        return None

    def reference(self, h_u, h_v, h_hat_v, **kw):
        return None


class Gradient(CreditRule):
    """``gradient``: ``tau = h_u + W^T (f'(a_v) * (h_hat_v - h_v))`` (one node's Jacobian)."""

    name = "gradient"
    for_losses = True
    scan_computes_delta = True

    def matrix(self, eng, slot) -> np.ndarray:
        """The matrix the proposal multiplies ``delta`` by: the live forward weight."""
        return eng.params[slot.weight]

    def propose(self, runner, eng, st, b, slot, sb) -> None:
        np.dot(b.delta2, self.matrix(eng, slot), out=sb.p2)

    def scan(self, eng, st, b, slot, sb, code, inv_count, start, stop) -> None:
        jm = eng.jit_merges.get(st.id)
        if jm is not None:  # a compiled merge strategy, called inside the scan
            args = (jm.fn, jm.params, b.d, b.hext, self.matrix(eng, slot), code, st.node.slope, start, stop,
                    sb.p, b.delta)
            if eng.gemm is not None:
                kd.scan_gradient_merge_cblas(eng.gemm, eng.one, eng.zero, *args)
            else:
                kd.scan_gradient_merge(*args)
            return
        args = (b.d, b.hext, self.matrix(eng, slot), code, st.node.slope, inv_count, start, stop, sb.p, b.delta)
        if eng.gemm is not None:
            kd.scan_gradient_cblas(eng.gemm, eng.one, eng.zero, *args)
        else:
            kd.scan_gradient(*args)

    def reference(self, h_u, h_v, h_hat_v, *, weight=None, deriv=None, **kw):
        if weight is None or deriv is None:
            raise GraphError(f"rule {self.name!r}: the reference needs the forward weight and f'(a_v)")
        return h_u + (deriv * (h_hat_v - h_v)) @ weight


class FeedbackAlignment(Gradient):
    """``fa``: the gradient rule with a fixed random feedback matrix ``B`` in place of ``W``.

    ``tau = h_u + B^T (f'(a_v) * (h_hat_v - h_v))`` (Lillicrap et al. 2016).
    ``B`` has the shape of the forward weight ``W [n_v, n_u]`` and entries
    ``N(0, 1/n_u)`` (so that ``||B^T delta|| ~ ||delta||``), drawn from a
    generator seeded by the engine's seed and the weight group's name: the
    edges that share a forward weight group share its feedback matrix, as
    they share the weight (the unrolled SRN's ``h_{t-1} -> h_t`` edges all
    use the feedback matrix of ``W_h``). The engine keeps it in
    ``engine.feedback[group]`` (read it, or write into it); no optimiser
    touches it.
    """

    name = "fa"
    for_losses = False
    needs_weights = True
    needs_feedback = True

    def matrix(self, eng, slot) -> np.ndarray:
        return eng.feedback[slot.weight]

    def make_feedback(self, group: str, shape: tuple, dtype, seed: int) -> np.ndarray:
        ss = np.random.SeedSequence([int(seed), zlib.crc32(group.encode("utf-8"))])
        rng = np.random.default_rng(ss)
        return (rng.standard_normal(shape) / np.sqrt(shape[1])).astype(dtype)

    def reference(self, h_u, h_v, h_hat_v, *, feedback=None, deriv=None, **kw):
        if feedback is None or deriv is None:
            raise GraphError(f"rule {self.name!r}: the reference needs the feedback matrix and f'(a_v)")
        return h_u + (deriv * (h_hat_v - h_v)) @ feedback


class _InverseRule(CreditRule):
    """Rules that propose through the consumer's inverse ``g``.

    How ``g`` is made (learned, analytic, ...) is the inverse's kind
    (:mod:`tpgraph.inverses`); the rule asks that object for the inverse at
    the forward value, the batched proposal and the chain scan, and only
    says which reference it subtracts.
    """

    needs_inverse = True
    #: dtp subtracts ``g(h_v)`` (a difference), tp proposes ``g(h_hat_v)`` itself.
    difference: ClassVar[bool] = True

    def prepare(self, runner, eng, st, b, slot, sb) -> None:
        impl = slot.inverse.impl
        impl.at_forward(runner, eng, st, b, slot, sb)
        impl.at_target(runner, eng, st, b, slot, sb)

    def propose(self, runner, eng, st, b, slot, sb) -> None:
        slot.inverse.impl.propose(runner, eng, st, b, slot, sb, self.difference)

    def scan(self, eng, st, b, slot, sb, code, inv_count, start, stop) -> None:
        slot.inverse.impl.scan(eng, st, b, slot, sb, code, inv_count, start, stop, self.difference)


class DifferenceTargetProp(_InverseRule):
    """``dtp``: ``tau = h_u + g(h_hat_v) - g(h_v)`` (Eqs. 12, 19)."""

    name = "dtp"
    difference = True

    def reference(self, h_u, h_v, h_hat_v, *, inverse=None, **kw):
        if inverse is None:
            raise GraphError(f"rule {self.name!r}: the reference needs the inverse g")
        return h_u + inverse(h_hat_v) - inverse(h_v)


class TargetProp(_InverseRule):
    """``tp``: ``tau = g(h_hat_v)`` (Eq. 11)."""

    name = "tp"
    difference = False

    def reference(self, h_u, h_v, h_hat_v, *, inverse=None, **kw):
        if inverse is None:
            raise GraphError(f"rule {self.name!r}: the reference needs the inverse g")
        return inverse(h_hat_v)


class DifferenceTargetPropAfter(DifferenceTargetProp):
    """``dtp_after``: dtp with the displacements merged *after* inversion (Roulet & Harchaoui).

    ``dtp`` inverts the consumer's merged target: ``tau = h_u + g(h_v + d) -
    g(h_v)`` with ``d = sum_i d_i`` (the displacements merged *before*
    inversion). ``dtp_after`` inverts two parts of ``d`` apart and adds the
    results in ``u``'s space:

        tau = h_u + [g(h_v + d_inv) - g(h_v)] + [g(h_v + d_rest) - g(h_v)]

    where ``d_inv`` is what reached ``v`` along edges that themselves
    propose through an inverse (in the unrolled SRN: the target propagated
    from ``h_{t+1}``) and ``d_rest`` the rest (the step target from ``y_t``).
    With a linear ``g`` the two agree; they differ where ``g`` bends. In a
    chain the scan runs unchanged on the propagated part: before it, every
    member's ``q_k = g(h_k + d_rest_k) - g(h_k)`` is computed in one batched
    product and planted in member ``k - 1``'s displacement; after it, the
    rest is added back. It needs the linear merge and uncut chains.
    """

    name = "dtp_after"
    takes_context = False  # its step part is what a many-to-one inverse replaces

    @staticmethod
    def _check(st, eng):
        if st.merge_kind != "linear":
            raise GraphError(f"rule 'dtp_after' at node {st.members[0]!r}: the displacements are split and inverted "
                             f"apart, which needs the linear merge (got merge {st.merge!r})")
        if st.cut_members:
            raise GraphError(f"rule 'dtp_after' at node {st.members[0]!r}: not with cut edges (truncation)")

    def prepare(self, runner, eng, st, b, slot, sb) -> None:
        super().prepare(runner, eng, st, b, slot, sb)
        if not (st.chain and slot.recurrent):
            return
        self._check(st, eng)
        rest = eng.scratch(("dtp_after_rest", st.id), b.d.shape)
        q = eng.scratch(("dtp_after_q", st.id), sb.p.shape)
        np.copyto(rest, b.d)  # every delivery but the scan's own has arrived
        slot.inverse.impl.propose(runner, eng, st, b, slot, sb, True)  # p_k = g(h_k + rest_k) - g(h_k), all k
        np.copyto(q, sb.p)
        b.d[:-1] = q[1:]  # member k - 1 starts from q_k; the scan adds g(h_k + d'_k) - g(h_k)
        b.d[-1] = 0

    def scan(self, eng, st, b, slot, sb, code, inv_count, start, stop) -> None:
        super().scan(eng, st, b, slot, sb, code, inv_count, start, stop)
        if stop <= 1:  # the last range of the chain: the propagated parts are final
            rest = eng.scratch(("dtp_after_rest", st.id), b.d.shape)
            q = eng.scratch(("dtp_after_q", st.id), sb.p.shape)
            sb.p += q  # each member's whole proposal to its predecessor
            b.d += rest  # each member's merged displacement: propagated part + the rest

    def propose(self, runner, eng, st, b, slot, sb) -> None:
        self._check(st, eng)
        impl = slot.inverse.impl
        d_inv = eng.scratch(("dtp_after_inv", st.id), b.d.shape)
        keep = eng.scratch(("dtp_after_keep", st.id), b.d.shape)
        part = eng.scratch(("dtp_after_part", st.id, slot.index), sb.p.shape)
        d_inv.fill(0)
        for k, incoming in enumerate(st.incoming):
            for cs, si, ck in incoming:
                src_slot = eng.plan.stacks[cs].slots[si]
                if src_slot.credit.needs_inverse:
                    d_inv[k] += eng.buf.stacks[cs].slots[si].p[ck]
        np.copyto(keep, b.d)
        try:
            np.copyto(b.d, d_inv)
            impl.propose(runner, eng, st, b, slot, sb, True)
            np.copyto(part, sb.p)
            np.subtract(keep, d_inv, out=b.d)
            impl.propose(runner, eng, st, b, slot, sb, True)
        finally:
            np.copyto(b.d, keep)
        sb.p += part

    def reference(self, h_u, h_v, h_hat_v, *, inverse=None, parts=None, **kw):
        """``parts``: the displacements inverted apart (their sum is ``h_hat_v - h_v``); none: plain dtp."""
        if inverse is None:
            raise GraphError(f"rule {self.name!r}: the reference needs the inverse g")
        if parts is None:
            parts = [h_hat_v - h_v]
        return h_u + sum(inverse(h_v + d) - inverse(h_v) for d in parts)


# ---------------------------------------------------------------------- the registry
_REGISTRY: Registry[CreditRule] = Registry("credit rule", CreditRule, "register_rule")


def register_rule(rule: CreditRule | type, overwrite: bool = False) -> CreditRule:
    """Register a credit rule (an instance, or a subclass of :class:`CreditRule`) under its ``name``.

    Returns the registered instance. Raises :class:`~tpgraph.errors.GraphError`
    if the name is taken (unless ``overwrite``) or the object is not a rule.
    """
    return _REGISTRY.register(rule, overwrite)


def known_rules() -> list[str]:
    """Names of all registered credit rules, in registration order."""
    return _REGISTRY.known()


def get_rule(name, where: str | None = None) -> CreditRule:
    """The rule registered as ``name``; a GraphError naming ``where`` and listing the known rules otherwise."""
    return _REGISTRY.get(name, where)


for _cls in (DifferenceTargetProp, TargetProp, Gradient, FeedbackAlignment, NoCredit, DifferenceTargetPropAfter):
    register_rule(_cls)
